"""Intensity transforms (array): non-finite values refused with the file's name, or replaced and remembered."""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import TransformBackends

from monai_fovea.transforms.intensity.functional import NAN_POLICIES, fill_non_finite

__all__ = ["FillNonFinite"]


def _source(img: object) -> str:
    return str(getattr(img, "meta", {}).get("filename_or_obj", "input"))


class FillNonFinite(Transform):
    """Refuse (``policy="error"``) or replace (``"fill"``) the NaN/inf values of a channel-first image ``[C, *S]``.

    Put it right after loading, before intensity normalisation: one NaN makes a percentile normalisation (and then
    every network output) NaN, so a NaN region would otherwise give an empty mask with no error.

    Args:
        policy: ``"error"``: raise a ``ValueError`` naming the file (MetaTensor ``filename_or_obj``) with the count;
            ``"fill"``: replace them by ``value`` (default: the finite minimum of each channel).
        value: the replacement for ``"fill"``.

    Returns:
        ``(image, non_finite)``: the image (same type and meta) and the bool ``[1, *S]`` map of pixels that had a
        non-finite value in any channel (all False when none).

    Example:
        >>> img, bad = FillNonFinite("fill")(torch.tensor([[1.0, float("nan"), 3.0]]))
        >>> img.tolist(), bad.tolist()
        ([[1.0, 1.0, 3.0]], [[False, True, False]])
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, policy: str = "error", value: float | None = None) -> None:
        if policy not in NAN_POLICIES:
            raise ValueError(f"policy must be one of {NAN_POLICIES}, got {policy!r}.")
        self.policy, self.value = policy, value

    def __call__(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        data = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img)
        if not data.is_floating_point():  # integer images cannot hold NaN
            return img, torch.zeros((1, *data.shape[1:]), dtype=torch.bool, device=data.device)
        try:
            filled, bad = fill_non_finite(data[None], self.value, self.policy)
        except ValueError as exc:
            raise ValueError(f"{_source(img)}: {exc}") from None
        if bad is None:
            return img, torch.zeros((1, *data.shape[1:]), dtype=torch.bool, device=data.device)
        out = MetaTensor(filled[0], meta=dict(img.meta), applied_operations=list(img.applied_operations)) \
            if isinstance(img, MetaTensor) else filled[0]
        return out, bad[0]
