"""Array transforms of segment-then-segment: component boxes, box expansion / jitter, batched crop+resize, paste.

Boxes are MONAI ``StandardMode`` corners ``[K, 2 * ndim]`` (starts then exclusive ends, array-index axis order);
they keep the container type they came in (numpy array or torch tensor).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Randomizable, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from .functional import box_crop_affine, component_boxes, crop_resize_boxes, expand_boxes, jitter_boxes, paste_boxes

__all__ = ["ComponentBoxes", "ExpandBoxes", "RandJitterBoxes", "CropResizeBoxes", "PasteBoxes", "RandComponentCrop"]


def _like(boxes: np.ndarray, dst) -> NdarrayOrTensor:
    """``boxes`` in ``dst``'s container (numpy, or a plain torch tensor on ``dst``'s device)."""
    if isinstance(dst, torch.Tensor):
        return torch.as_tensor(boxes, dtype=torch.int64, device=dst.device)
    return np.asarray(boxes, np.int64)


def _spatial_size(img) -> tuple[int, ...]:
    return tuple(int(s) for s in img.shape[1:])


class ComponentBoxes(Transform):
    """One bounding box per connected component of a binary or multi-class mask (per class for multi-class).

    MONAI has no per-component boxes (``generate_spatial_bounding_box`` gives one box for the whole foreground).

    Args:
        connectivity: 4 or 8 in 2D, 6, 18 or 26 in 3D; ``None`` = full connectivity (8 / 26, as the reference).
        min_size: components with fewer voxels are ignored.
        threshold: for probability maps: binarise as ``mask > threshold`` first (one class, 1). ``None`` (default):
            the mask holds integer labels.

    Returns:
        ``(boxes, classes)``: ``int64 [K, 2 * ndim]`` end-exclusive boxes and ``int64 [K]`` component classes, numpy
        for a numpy mask, torch (on the mask's device) for a tensor.

    Raises:
        ValueError: ``threshold`` is None and the mask has non-integer values (a probability map would otherwise
            give one "class" per distinct value); the message says to pass ``threshold``.

    Example:
        >>> mask = np.zeros((1, 8, 8), np.uint8); mask[0, 1:3, 1:3] = 1; mask[0, 5:8, 4:6] = 2
        >>> boxes, classes = ComponentBoxes(min_size=1)(mask)
        >>> boxes.tolist(), classes.tolist()
        ([[1, 1, 3, 3], [5, 4, 8, 6]], [1, 2])
        >>> prob = np.zeros((1, 8, 8)); prob[0, 2:5, 2:4] = [[0.6], [0.9], [0.7]]
        >>> ComponentBoxes(min_size=1, threshold=0.5)(prob)[0].tolist()
        [[2, 2, 5, 4]]
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, connectivity: int | None = None, min_size: int = 5, threshold: float | None = None) -> None:
        self.connectivity = connectivity
        self.min_size = min_size
        self.threshold = threshold

    def __call__(self, mask: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        boxes, classes = component_boxes(mask, self.connectivity, self.min_size, self.threshold)
        return _like(boxes, mask), _like(classes, mask)


class ExpandBoxes(Transform):
    """Coarse-resolution component boxes → full-resolution crop boxes (seed 001, §2.1).

    Scale by ``scale``; make square / cubic (``square``); pad by ``margin`` full-resolution pixels plus
    ``relative_margin`` × the box's longest side; shift each box back inside the image keeping its size (a box
    longer than the image along an axis is clipped to the image along it); drop boxes with a side < ``min_size``.
    The reference uses ``margin = fine input size // 8``.

    Args:
        scale: full-resolution size / coarse size (one value or one per axis).
        margin: padding in full-resolution pixels on every side.
        square: make boxes square (2D) / cubic (3D).
        min_size: minimum side of a kept box, full-resolution pixels.
        image_size: full-resolution spatial size (can also be given per call).
        relative_margin: additional padding relative to the box size.
        return_indices: also return the indices of the input boxes that were kept.

    Returns:
        ``[K', 2 * ndim]`` boxes (and the kept indices when ``return_indices``).

    Example:
        >>> ExpandBoxes(scale=4, margin=2, image_size=(64, 64))(np.array([[2, 2, 4, 3]])).tolist()
        [[6, 4, 18, 16]]
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        scale: float | Sequence[float] = 1.0,
        margin: int = 0,
        square: bool = True,
        min_size: int = 5,
        image_size: Sequence[int] | None = None,
        relative_margin: float = 0.0,
        return_indices: bool = False,
    ) -> None:
        self.scale = scale
        self.margin = margin
        self.square = square
        self.min_size = min_size
        self.image_size = image_size
        self.relative_margin = relative_margin
        self.return_indices = return_indices

    def __call__(self, boxes: NdarrayOrTensor, image_size: Sequence[int] | None = None):
        size = image_size if image_size is not None else self.image_size
        if size is None:
            raise ValueError("ExpandBoxes needs image_size (in the constructor or the call).")
        out, keep = expand_boxes(boxes, size, self.scale, self.margin, self.relative_margin, self.square, self.min_size)
        out = _like(out, boxes)
        return (out, _like(keep, boxes)) if self.return_indices else out


class RandJitterBoxes(Randomizable, Transform):
    """Add a uniform integer in ``[-max_shift, max_shift]`` to every box start and size (training only).

    Args:
        max_shift: largest shift, full-resolution pixels (reference: 16).

    Returns:
        jittered ``[K, 2 * ndim]`` boxes (sizes at least 1; not clipped — ``ExpandBoxes`` moves them inside).

    Example:
        >>> t = RandJitterBoxes(max_shift=2); _ = t.set_random_state(0)
        >>> t(np.array([[10, 10, 20, 20]])).shape
        (1, 4)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, max_shift: int = 16) -> None:
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}.")
        self.max_shift = max_shift
        self._seed: int = 0

    def randomize(self, data=None) -> None:
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, boxes: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        if randomize:
            self.randomize()
        return _like(jitter_boxes(boxes, self.max_shift, np.random.default_rng(self._seed)), boxes)


class CropResizeBoxes(Transform):
    """Crop every box at full resolution and resize it to ``output_size``, all boxes in one batched resampling call.

    Equal to a per-box ``SpatialCrop`` + ``Resize`` loop. For a MetaTensor input the output is a batch MetaTensor
    whose ``affine`` is ``[K, 4, 4]`` (each crop's voxel → world map) and whose meta holds the ``boxes``.

    Args:
        output_size: spatial size of every crop.
        mode: ``"bilinear"``/``"trilinear"`` for images, ``"nearest"`` for labels (keeps the dtype).

    Returns:
        ``[K, C, *output_size]`` crops.

    Example:
        >>> img = torch.arange(16.0).reshape(1, 4, 4)
        >>> CropResizeBoxes((2, 2), mode="nearest")(img, [[0, 0, 4, 4]])[0, 0].tolist()
        [[0.0, 2.0], [8.0, 10.0]]
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, output_size: Sequence[int], mode: str = "bilinear") -> None:
        self.output_size = tuple(int(s) for s in output_size)
        self.mode = mode

    def __call__(self, img: NdarrayOrTensor, boxes: NdarrayOrTensor, mode: str | None = None) -> torch.Tensor:
        img_t = img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img))
        data = img_t.as_tensor() if isinstance(img_t, MetaTensor) else img_t
        crops = crop_resize_boxes(data, boxes, self.output_size, mode or self.mode)
        if not isinstance(img, MetaTensor):
            return crops
        box_arr = np.asarray(boxes.cpu() if isinstance(boxes, torch.Tensor) else boxes)
        affines = [box_crop_affine(img.affine, b, self.output_size) for b in box_arr]
        meta = dict(img.meta)
        out = MetaTensor(crops, meta=meta)
        out.affine = torch.stack(affines) if affines else torch.zeros((0, *img.affine.shape), dtype=torch.float64)
        out.meta["boxes"] = torch.as_tensor(box_arr, dtype=torch.int64)
        out.is_batch = True
        return out


class PasteBoxes(Transform):
    """Resize every crop prediction back to its box and fuse them into one full-resolution map.

    Overlapping boxes are fused with ``reduction``: ``"or"`` for binary masks, ``"max"`` or ``"mean"`` for
    probabilities. Pixels no box covers get ``fill``. If the crops are a batch MetaTensor from
    :class:`CropResizeBoxes`, the output MetaTensor gets the full image's affine back.

    Args:
        image_size: full-resolution spatial size (can also be given per call).
        reduction: ``"or"``, ``"max"`` or ``"mean"``.
        mode: resampling back to the box: ``"nearest"`` (default for ``"or"``) or ``"bilinear"``/``"trilinear"``.
        fill: value of uncovered pixels.

    Returns:
        ``[C, *image_size]`` map (bool for ``"or"``).

    Example:
        >>> crops = torch.ones(2, 1, 2, 2)
        >>> PasteBoxes((4, 4))(crops, [[0, 0, 2, 2], [1, 1, 3, 3]]).sum().item()
        7
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self, image_size: Sequence[int] | None = None, reduction: str = "or", mode: str | None = None, fill: float = 0.0
    ) -> None:
        if reduction not in ("or", "max", "mean"):
            raise ValueError(f"reduction must be 'or', 'max' or 'mean', got {reduction!r}.")
        self.image_size = image_size
        self.reduction = reduction
        self.mode = mode or ("nearest" if reduction == "or" else "bilinear")
        self.fill = fill

    def __call__(
        self, crops: NdarrayOrTensor, boxes: NdarrayOrTensor, image_size: Sequence[int] | None = None
    ) -> torch.Tensor:
        size = image_size if image_size is not None else self.image_size
        if size is None:
            raise ValueError("PasteBoxes needs image_size (in the constructor or the call).")
        crops_t = crops if isinstance(crops, torch.Tensor) else torch.as_tensor(np.asarray(crops))
        data = crops_t.as_tensor() if isinstance(crops_t, MetaTensor) else crops_t
        out = paste_boxes(data, boxes, size, self.reduction, self.mode, self.fill)
        if isinstance(crops, MetaTensor) and len(data) and crops.affine.ndim == 3:
            box0 = np.asarray(boxes.cpu() if isinstance(boxes, torch.Tensor) else boxes)[0]
            local = box_crop_affine(torch.eye(crops.affine.shape[-1]), box0, data.shape[2:])
            meta = {k: v for k, v in crops.meta.items() if k not in ("boxes", "affine")}
            result = MetaTensor(out, meta=meta)
            result.affine = crops.affine[0].to(torch.float64) @ torch.linalg.inv(local)
            return result
        return out


class RandComponentCrop(Randomizable, Transform):
    """Training crop for the fine network: one random ground-truth component, jittered, expanded, resized.

    The component's box is jittered (:class:`RandJitterBoxes`), squared and padded by ``margin``
    (:class:`ExpandBoxes` at scale 1) and cropped from image (linear) and label (nearest) to ``output_size``.
    When the label has no component the whole image is resized instead (the reference's behaviour).

    Args:
        output_size: spatial size of the crops (the fine network's input size).
        margin: padding in pixels; ``None`` = ``min(output_size) // 8`` (reference).
        max_shift: jitter amplitude (0 disables jitter).
        connectivity: component connectivity (see :class:`ComponentBoxes`).
        min_size: smallest component (voxels) to crop.

    Returns:
        ``(image_crop [C, *output_size], label_crop [C', *output_size], box [2 * ndim])``.

    Example:
        >>> img = torch.rand(1, 32, 32); lab = torch.zeros(1, 32, 32); lab[0, 4:8, 4:8] = 1
        >>> t = RandComponentCrop((16, 16), max_shift=0); _ = t.set_random_state(0)
        >>> [x.shape for x in t(img, lab)][:2]
        [torch.Size([1, 16, 16]), torch.Size([1, 16, 16])]
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        output_size: Sequence[int],
        margin: int | None = None,
        max_shift: int = 16,
        connectivity: int | None = None,
        min_size: int = 1,
    ) -> None:
        self.output_size = tuple(int(s) for s in output_size)
        self.margin = min(self.output_size) // 8 if margin is None else margin
        self.max_shift = max_shift
        self.connectivity = connectivity
        self.min_size = min_size
        self._pick = 0
        self._seed = 0

    def randomize(self, num_boxes: int) -> None:
        self._pick = int(self.R.randint(0, num_boxes)) if num_boxes else 0
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def choose_box(self, label: NdarrayOrTensor, randomize: bool = True) -> np.ndarray:
        """The (jittered, expanded) full-resolution box to crop, ``[2 * ndim]``."""
        size = _spatial_size(label)
        boxes, _ = component_boxes(label if label.shape[0] == 1 else (np.asarray(label) > 0).any(0, keepdims=True),
                                   self.connectivity, self.min_size)
        if randomize:
            self.randomize(len(boxes))
        if len(boxes) == 0:
            return np.asarray([0] * len(size) + list(size), np.int64)
        box = boxes[self._pick : self._pick + 1]
        if self.max_shift:
            box = jitter_boxes(box, self.max_shift, np.random.default_rng(self._seed))
        out, _ = expand_boxes(box, size, 1.0, self.margin, 0.0, True, 1)
        return out[0]

    def __call__(self, img: NdarrayOrTensor, label: NdarrayOrTensor, randomize: bool = True):
        box = self.choose_box(label, randomize)
        img_crop = _crop_one(img, box, self.output_size, "bilinear")
        lab_crop = _crop_one(label, box, self.output_size, "nearest")
        return img_crop, lab_crop, box


def _crop_one(img: NdarrayOrTensor, box: np.ndarray, output_size: tuple[int, ...], mode: str) -> NdarrayOrTensor:
    """One crop with meta/affine kept (MetaTensor) or the input's container type (numpy/tensor)."""
    out = CropResizeBoxes(output_size, mode)(img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img)),
                                             box[None])[0]
    if isinstance(img, MetaTensor):
        result = MetaTensor(out.as_tensor(), meta={k: v for k, v in img.meta.items() if k != "affine"})
        result.affine = box_crop_affine(img.affine, box, output_size)
        result.meta["crop_box"] = torch.as_tensor(box)
        return result
    out, *_ = convert_to_dst_type(out, img)
    return out
