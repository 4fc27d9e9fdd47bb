"""Pure tensor functions of the intensity transforms: non-finite values (NaN, inf) checked or replaced."""

from __future__ import annotations

import torch

__all__ = ["NAN_POLICIES", "fill_non_finite"]

NAN_POLICIES = ("error", "fill")


def fill_non_finite(
    images: torch.Tensor, value: float | None = None, policy: str = "fill"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check a batch ``[B, C, *S]`` for NaN/inf and, with ``policy="fill"``, replace them.

    A network turns one NaN into NaN over its whole receptive field and every comparison with NaN is False, so an
    image with a NaN region would silently give an empty (or holed) mask.

    Args:
        images: float batch ``[B, C, *S]``.
        value: the replacement; ``None`` = the finite minimum of each image and channel (background for most
            modalities after normalisation).
        policy: ``"error"`` (raise on any non-finite value) or ``"fill"``.

    Returns:
        ``(filled, non_finite)``: the batch with non-finite values replaced (the input itself when there are none)
        and the bool ``[B, 1, *S]`` map of pixels with a non-finite value in any channel (``None`` when none).

    Raises:
        ValueError: ``policy="error"`` and the batch has a non-finite value (the message gives the count and says to
            pass ``nan_policy="fill"``); ``policy="fill"`` without ``value`` and an image channel with no finite value;
            an unknown ``policy``.

    Example:
        >>> x = torch.tensor([[[[0.25, float("nan")], [0.75, 0.5]]]])
        >>> filled, bad = fill_non_finite(x)
        >>> filled[0, 0].tolist(), bad[0, 0].tolist()
        ([[0.25, 0.25], [0.75, 0.5]], [[False, True], [False, False]])
    """
    if policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {policy!r}.")
    finite = torch.isfinite(images)
    if bool(finite.all()):
        return images, None
    count, total = int((~finite).sum()), finite.numel()
    if policy == "error":
        raise ValueError(
            f"the image has {count} non-finite values (NaN or inf) of {total} ({100 * count / total:.2f}%): "
            "a NaN spreads through the networks and would give an empty or holed mask. Pass nan_policy='fill' to "
            "segment the rest of the image (those pixels are then 0 in the mask), or fix the input."
        )
    if value is None:
        flat = torch.where(finite, images, torch.full_like(images, torch.inf)).flatten(2)
        low = flat.min(dim=2).values  # [B, C]
        if not bool(torch.isfinite(low).all()):
            raise ValueError("nan_policy='fill': an image channel has no finite value at all; there is nothing to segment.")
        fill = low.reshape(*low.shape, *([1] * (images.ndim - 2))).expand_as(images)
    else:
        fill = torch.full_like(images, float(value))
    return torch.where(finite, images, fill), (~finite).any(dim=1, keepdim=True)
