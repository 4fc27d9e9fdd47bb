"""Segment-then-segment inference (Benčević et al. 2023, seed 001), 2D and 3D.

A coarse network segments the uniformly downscaled image; every connected component of its mask gives a box,
scaled to full resolution, squared and padded; all boxes are cropped from the full-resolution image and resized to
the fine network's input size in one batched resampling call; the fine network runs on batches of crops (not one
forward per crop); the crops' probabilities are resized back into their boxes and fused (max) into the
full-resolution mask.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import ensure_tuple_rep
from tqdm.auto import tqdm

from monai_fovea.transforms.boxes.functional import component_boxes, crop_resize_boxes, expand_boxes, paste_boxes
from monai_fovea.transforms.intensity.functional import NAN_POLICIES, fill_non_finite

__all__ = ["SegmentThenSegmentInferer", "downscale_image", "downscale_label", "NAN_POLICIES", "fill_non_finite"]


def downscale_image(img: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Uniform downscale of a batch ``[B, C, *S]`` to ``size`` (area averaging, i.e. antialiased; linear upscale).

    The coarse network must be trained on exactly this downscaling: training entry points call it too.
    """
    size = tuple(int(s) for s in size)
    if tuple(img.shape[2:]) == size:
        return img
    img = img.float()
    if all(s <= i for s, i in zip(size, img.shape[2:])):
        return F.interpolate(img, size=size, mode="area")
    return F.interpolate(img, size=size, mode="bilinear" if len(size) == 2 else "trilinear", align_corners=False)


def downscale_label(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Downscaled binary target for the coarse network: the foreground fraction of each coarse pixel, >= 0.5."""
    return (downscale_image((label > 0).float(), size) >= 0.5).float()


def _activation(name: str | Callable | None) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(name):
        return name
    if name is None:
        return lambda x: x[:, :1]
    if name == "sigmoid":
        return lambda x: torch.sigmoid(x[:, :1])
    if name == "softmax":  # foreground = not background
        return lambda x: 1.0 - torch.softmax(x, dim=1)[:, :1]
    raise ValueError(f"activation must be 'sigmoid', 'softmax', None or a callable, got {name!r}.")


class SegmentThenSegmentInferer(Inferer):
    """Coarse net on the downscaled image → component boxes → fine net on batches of full-resolution crops → mask.

    Args:
        coarse_size: spatial size of the downscaled image the coarse net sees (int or one per axis); ``None`` to use
            ``coarse_scale`` instead.
        fine_size: spatial size of the crops the fine net sees (int or one per axis).
        margin: padding of every box, full-resolution pixels; ``None`` = ``min(fine_size) // 8`` (reference).
        min_size: boxes with a side shorter than this (full-resolution pixels) are dropped (reference: 5).
        threshold: probability threshold of both stages.
        fallback: what to do when the coarse mask has no component: ``"empty"`` returns an empty mask (the
            reference's behaviour); ``"fine_on_whole"`` runs the fine net on the whole image resized to
            ``fine_size`` and upsamples its mask (useful when objects can be too small for the coarse net).
        sw_batch_size: number of crops per fine-net forward.
        sw_device: device the networks run on (default: the input's).
        device: device the full-resolution output is assembled on (default: the input's).
        progress: tqdm progress bar over fine-net batches.
        connectivity: component connectivity of the coarse mask (``None``: 8 / 26).
        coarse_min_size: smallest coarse component kept, in coarse voxels.
        square: square / cubic boxes (reference).
        relative_margin: additional margin relative to the box size.
        reduction: fusion of overlapping crops: ``"max"`` (default) or ``"mean"`` of probabilities.
        coarse_roi_size: when given and the downscaled volume is larger, the coarse net runs with MONAI's
            ``SlidingWindowInferer`` at this window size (large 3D volumes).
        activation: ``"sigmoid"`` (one output channel), ``"softmax"`` (foreground = 1 - background) or a callable
            mapping logits ``[N, C, *S]`` to foreground probabilities ``[N, 1, *S]``.
        coarse_scale: with ``coarse_size=None``: the downscale factor (coarse size = ``round(S / coarse_scale)``,
            at least ``coarse_min_side`` per axis), so that images of any size are downscaled as in training.
        coarse_min_side: smallest coarse side with ``coarse_scale`` (a U-Net with 4 downsamplings and instance
            norm needs 32).
        nan_policy: non-finite (NaN / inf) input values: ``"error"`` (default) raises a ``ValueError`` giving their
            count; ``"fill"`` replaces them by ``nan_fill`` before both networks and sets their pixels to 0 in the
            mask, so the rest of the image is segmented as it would be without them.
        nan_fill: the value that replaces non-finite values with ``nan_policy="fill"``; ``None`` = the finite
            minimum of each image and channel.

    A constant image (every value equal, e.g. all zeros) has nothing to segment: its mask is empty and a
    ``UserWarning`` says so (the networks are not trusted on it: a constant input gives them no contrast).

    Raises:
        ValueError: (call) non-finite input values with ``nan_policy="error"``; inputs that are not
            ``[B, C, *S]`` tensors with 2 or 3 spatial dims. (Construction) an unknown ``nan_policy``, ``fallback``
            or ``reduction``.

    Returns:
        ``__call__(inputs [B, C, *S], coarse_net, fine_net)`` → float mask ``[B, 1, *S]`` of 0/1 (a MetaTensor with
        the input's meta for a MetaTensor input); with ``return_boxes=True`` also the list of ``[K_b, 2 * ndim]``
        full-resolution boxes per image. ``last_boxes`` always holds the boxes of the last call.

    Example:
        >>> net = torch.nn.Conv2d(1, 1, 1)
        >>> inferer = SegmentThenSegmentInferer(coarse_size=16, fine_size=16)
        >>> inferer(torch.rand(1, 1, 64, 64), net, net).shape
        torch.Size([1, 1, 64, 64])
    """

    def __init__(
        self,
        coarse_size: int | Sequence[int],
        fine_size: int | Sequence[int],
        margin: int | None = None,
        min_size: int = 5,
        threshold: float = 0.5,
        fallback: str = "empty",
        sw_batch_size: int = 16,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        connectivity: int | None = None,
        coarse_min_size: int = 1,
        square: bool = True,
        relative_margin: float = 0.0,
        reduction: str = "max",
        coarse_roi_size: int | Sequence[int] | None = None,
        activation: str | Callable | None = "sigmoid",
        coarse_scale: float | Sequence[float] | None = None,
        coarse_min_side: int = 32,
        nan_policy: str = "error",
        nan_fill: float | None = None,
    ) -> None:
        super().__init__()
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}.")
        if fallback not in ("empty", "fine_on_whole"):
            raise ValueError(f"fallback must be 'empty' or 'fine_on_whole', got {fallback!r}.")
        if reduction not in ("max", "mean"):
            raise ValueError(f"reduction must be 'max' or 'mean', got {reduction!r}.")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
        if coarse_size is None and coarse_scale is None:
            raise ValueError("coarse_size or coarse_scale must be given.")
        self.coarse_size, self.fine_size, self.coarse_scale = coarse_size, fine_size, coarse_scale
        self.margin = margin
        self.min_size, self.threshold, self.fallback = min_size, threshold, fallback
        self.sw_batch_size, self.sw_device, self.device, self.progress = sw_batch_size, sw_device, device, progress
        self.connectivity, self.coarse_min_size = connectivity, coarse_min_size
        self.square, self.relative_margin, self.reduction = square, relative_margin, reduction
        self.coarse_roi_size, self.coarse_min_side = coarse_roi_size, coarse_min_side
        self.activation = _activation(activation)
        self.nan_policy, self.nan_fill = nan_policy, nan_fill
        self.last_boxes: list[torch.Tensor] = []

    def _sizes(self, ndim: int, spatial: Sequence[int] | None = None) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        if self.coarse_size is not None:
            coarse = tuple(int(s) for s in ensure_tuple_rep(self.coarse_size, ndim))
        elif spatial is None:
            coarse = ()
        else:
            scales = ensure_tuple_rep(self.coarse_scale, ndim)
            coarse = tuple(max(self.coarse_min_side, int(round(s / f))) for s, f in zip(spatial, scales))
        fine = tuple(int(s) for s in ensure_tuple_rep(self.fine_size, ndim))
        margin = min(fine) // 8 if self.margin is None else int(self.margin)
        return coarse, fine, margin

    @torch.no_grad()
    def coarse_probabilities(self, image: torch.Tensor, coarse_net: Callable) -> torch.Tensor:
        """Coarse foreground probabilities ``[B, 1, *coarse_size]`` of a batch ``[B, C, *S]``."""
        coarse, _, _ = self._sizes(image.ndim - 2, image.shape[2:])
        small = downscale_image(image, coarse)
        if self.coarse_roi_size is not None:
            roi = ensure_tuple_rep(self.coarse_roi_size, len(coarse))
            if any(s > r for s, r in zip(coarse, roi)):
                sw = SlidingWindowInferer(roi_size=roi, sw_batch_size=self.sw_batch_size, overlap=0.25, mode="gaussian",
                                          sw_device=self.sw_device, device=self.sw_device, progress=self.progress)
                return self.activation(sw(small, coarse_net))
        return self.activation(coarse_net(small))

    @torch.no_grad()
    def coarse_mask(self, inputs: torch.Tensor, coarse_net: Callable) -> torch.Tensor:
        """The coarse-only baseline: coarse probabilities upsampled (linear) to full resolution, thresholded.

        Returns:
            float 0/1 mask ``[B, 1, *S]``.
        """
        data = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        data, non_finite = fill_non_finite(data.float(), self.nan_fill, self.nan_policy)
        sw_device = self.sw_device if self.sw_device is not None else data.device
        prob = self.coarse_probabilities(data.to(sw_device), coarse_net)
        mode = "bilinear" if data.ndim == 4 else "trilinear"
        up = F.interpolate(prob, size=tuple(data.shape[2:]), mode=mode, align_corners=False)
        device = self.device if self.device is not None else data.device
        mask = (up > self.threshold).float().to(device)
        if non_finite is not None:
            mask[non_finite.to(device)] = 0.0
        return mask

    def boxes_from_coarse(self, coarse_prob: torch.Tensor, image_size: Sequence[int]) -> np.ndarray:
        """Full-resolution crop boxes ``[K, 2 * ndim]`` of one coarse probability map ``[1, *coarse_size]``."""
        ndim = coarse_prob.ndim - 1
        _, _, margin = self._sizes(ndim)
        boxes, _ = component_boxes(coarse_prob > self.threshold, self.connectivity, self.coarse_min_size)
        scale = [full / c for full, c in zip(image_size, coarse_prob.shape[1:])]
        out, _ = expand_boxes(boxes, image_size, scale, margin, self.relative_margin, self.square, self.min_size)
        return out

    @torch.no_grad()
    def fine_probabilities(self, image: torch.Tensor, boxes: np.ndarray, fine_net: Callable) -> torch.Tensor:
        """Fine probabilities ``[K, 1, *fine_size]`` of every box of one image ``[C, *S]``, batched."""
        _, fine, _ = self._sizes(image.ndim - 1)
        sw_device = self.sw_device if self.sw_device is not None else image.device
        crops = crop_resize_boxes(image, boxes, fine, "bilinear")  # one resampling call for all boxes
        outs = []
        starts = range(0, len(crops), self.sw_batch_size)
        for s in tqdm(starts, desc="fine crops", disable=not self.progress, leave=False):
            batch = crops[s : s + self.sw_batch_size].to(sw_device)
            outs.append(self.activation(fine_net(batch)).to(image.device))
        return torch.cat(outs) if outs else crops.new_zeros((0, 1, *fine))

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, coarse_net: Callable, fine_net: Callable | None = None,
                 return_boxes: bool = False):
        if fine_net is None:  # one CoarseFineNet, as MONAI's engines pass it (inferer(inputs, network))
            if not (hasattr(coarse_net, "coarse") and hasattr(coarse_net, "fine")):
                raise TypeError("fine_net is required unless coarse_net is a CoarseFineNet (with .coarse and .fine)")
            coarse_net, fine_net = coarse_net.coarse, coarse_net.fine
        if not isinstance(inputs, torch.Tensor) or inputs.ndim not in (4, 5):
            got = getattr(inputs, "shape", type(inputs))
            raise ValueError(f"inputs must be a [B, C, *spatial] tensor with 2 or 3 spatial dims, got {got}.")
        device = self.device if self.device is not None else inputs.device
        sw_device = self.sw_device if self.sw_device is not None else inputs.device
        data = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        data, non_finite = fill_non_finite(data.float(), self.nan_fill, self.nan_policy)
        spatial = tuple(int(s) for s in data.shape[2:])
        flat = data.flatten(1)
        constant = (flat.amax(dim=1) == flat.amin(dim=1)).tolist()
        coarse_prob = self.coarse_probabilities(data.to(sw_device), coarse_net).to(device)
        masks, all_boxes = [], []
        for b in range(data.shape[0]):
            if constant[b]:
                warnings.warn(
                    f"SegmentThenSegmentInferer: image {b} of the batch is constant (every value is "
                    f"{float(flat[b, 0]):g}): nothing to segment, returning an empty mask.",
                    UserWarning,
                    stacklevel=2,
                )
                masks.append(torch.zeros((1, *spatial), device=device))
                all_boxes.append(torch.zeros((0, 2 * len(spatial)), dtype=torch.int64))
                continue
            image = data[b].to(device)
            boxes = self.boxes_from_coarse(coarse_prob[b], spatial)
            if len(boxes) == 0 and self.fallback == "fine_on_whole":
                boxes = np.asarray([[0] * len(spatial) + list(spatial)], np.int64)
            if len(boxes) == 0:
                masks.append(torch.zeros((1, *spatial), device=device))
            else:
                probs = self.fine_probabilities(image, boxes, fine_net)
                fused = paste_boxes(probs.to(device), boxes, spatial, self.reduction, "bilinear")
                masks.append((fused > self.threshold).float())
            all_boxes.append(torch.as_tensor(boxes, dtype=torch.int64))
        mask = torch.stack(masks)
        if non_finite is not None:
            mask[non_finite.to(device)] = 0.0  # no answer where the image had none
        if isinstance(inputs, MetaTensor):
            mask = MetaTensor(mask, meta=inputs.meta, applied_operations=[])
            mask.is_batch = inputs.is_batch
        self.last_boxes = all_boxes
        return (mask, all_boxes) if return_boxes else mask
