"""Pure functions behind the segment-then-segment box transforms (seed 001).

Boxes follow MONAI's ``StandardMode`` (``monai.data.box_utils``): ``[K, 2 * ndim]`` integer corners
``start_0, ..., start_{n-1}, end_0, ..., end_{n-1}`` in array-index order of the spatial axes, ends exclusive.
Images are channel-first (``[C, *spatial]``); crops are ``[K, C, *output_size]``.

All crops of an image are resampled in one call (``grid_sample`` for linear modes, one gather for nearest), so the
cost does not grow with a Python loop over boxes on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.box_utils import get_spatial_dims
from scipy import ndimage

__all__ = [
    "connectivity_structure",
    "component_boxes",
    "expand_boxes",
    "jitter_boxes",
    "crop_resize_boxes",
    "paste_boxes",
    "box_crop_affine",
]

# connectivity (number of neighbours) -> scipy's ``generate_binary_structure`` rank, per spatial dimension
_CONNECTIVITY = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}


def connectivity_structure(ndim: int, connectivity: int | None) -> np.ndarray:
    """Structuring element for ``connectivity`` neighbours (4/8 in 2D, 6/18/26 in 3D; ``None``: full, 8 or 26).

    Example:
        >>> connectivity_structure(2, 4).astype(int).tolist()
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    """
    if ndim not in _CONNECTIVITY:
        raise ValueError(f"mask must have 2 or 3 spatial dimensions, got {ndim}.")
    if connectivity is None:
        return ndimage.generate_binary_structure(ndim, ndim)
    if connectivity not in _CONNECTIVITY[ndim]:
        raise ValueError(f"connectivity must be one of {sorted(_CONNECTIVITY[ndim])} in {ndim}D, got {connectivity}.")
    return ndimage.generate_binary_structure(ndim, _CONNECTIVITY[ndim][connectivity])


def _spatial_numpy(mask) -> np.ndarray:
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim not in (3, 4):
        raise ValueError(f"mask must be channel-first [1, *spatial] with 2 or 3 spatial dims, got shape {arr.shape}.")
    if arr.shape[0] != 1:
        raise ValueError(f"mask must have one channel (label values, not one-hot), got {arr.shape[0]} channels.")
    return arr[0]


def _check_label_values(arr: np.ndarray) -> None:
    """A label mask holds integer class values; anything else (a probability map, NaN) needs a threshold."""
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return
    bad = ~np.isfinite(arr) | (arr != np.round(arr))
    if bad.any():
        example = arr[bad].flat[0]
        raise ValueError(
            f"mask has {int(bad.sum())} non-integer values (e.g. {example!r}): every distinct value would be a class. "
            "For a probability map, pass threshold (e.g. threshold=0.5) to binarise it as mask > threshold first."
        )


def component_boxes(
    mask, connectivity: int | None = None, min_size: int = 5, threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box and class of every connected component of a binary or multi-class mask.

    Args:
        mask: ``[1, *spatial]`` (2D or 3D) label image; 0 is background. A multi-class mask is split per class value
            and the components of each class are found separately.
        connectivity: 4 or 8 in 2D, 6, 18 or 26 in 3D; ``None`` = full (8 / 26, the reference's choice).
        min_size: components with fewer voxels are ignored (noise in a coarse prediction).
        threshold: binarise first (foreground = ``mask > threshold``, class 1), for probability maps. ``None``: the
            values are labels and must be integers.

    Returns:
        ``(boxes, classes)``: ``int64 [K, 2 * ndim]`` end-exclusive boxes sorted by class then by scipy's label order
        (raster order of each component's first voxel), and ``int64 [K]`` class values.

    Raises:
        ValueError: ``threshold`` is None and the mask holds non-integer (or non-finite) values — a probability map
            read as labels would make every distinct value a class; also a mask that is not ``[1, *spatial]``.

    Example:
        >>> m = np.zeros((1, 6, 6), int); m[0, 1:3, 2:5] = 1
        >>> component_boxes(m, min_size=1)[0].tolist()
        [[1, 2, 3, 5]]
        >>> p = np.zeros((1, 6, 6)); p[0, 1:3, 2:5] = 0.9
        >>> component_boxes(p, min_size=1, threshold=0.5)[0].tolist()
        [[1, 2, 3, 5]]
    """
    arr = _spatial_numpy(mask)
    ndim = arr.ndim
    structure = connectivity_structure(ndim, connectivity)
    if threshold is not None:
        arr = (arr > threshold).astype(np.uint8)  # NaN > t is False: non-finite values are background
    else:
        _check_label_values(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    boxes, classes = [], []
    for value in np.unique(arr):
        if value == 0:
            continue
        labels, n = ndimage.label(arr == value, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        for idx, slc in enumerate(ndimage.find_objects(labels)):
            if slc is None or sizes[idx] < min_size:
                continue
            boxes.append([s.start for s in slc] + [s.stop for s in slc])
            classes.append(int(value))
    if not boxes:
        return np.zeros((0, 2 * ndim), np.int64), np.zeros((0,), np.int64)
    return np.asarray(boxes, np.int64), np.asarray(classes, np.int64)


def _as_int_boxes(boxes) -> np.ndarray:
    arr = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes)
    if arr.ndim != 2 or arr.shape[1] not in (4, 6):
        raise ValueError(f"boxes must be [K, 4] (2D) or [K, 6] (3D), got shape {arr.shape}.")
    get_spatial_dims(boxes=arr)
    return arr


def expand_boxes(
    boxes,
    image_size: Sequence[int],
    scale: float | Sequence[float] = 1.0,
    margin: int = 0,
    relative_margin: float = 0.0,
    square: bool = True,
    min_size: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Coarse boxes → full-resolution crop boxes, in the reference's order.

    1. scale every coordinate by ``scale`` (start floored, end ceiled, so the box still covers the component);
    2. ``square``: grow the short sides to the longest one, centred (the extra pixel, if odd, goes to the end);
    3. pad every side by ``margin + round(relative_margin * longest side)`` full-resolution pixels;
    4. boxes longer than the image along an axis are clipped to the image along that axis; others are shifted
       back inside the image keeping their size;
    5. boxes with a side shorter than ``min_size`` are dropped.

    Args:
        boxes: ``[K, 2 * ndim]`` end-exclusive boxes (coarse coordinates when ``scale != 1``).
        image_size: full-resolution spatial size.
        scale: full-resolution / coarse size, one value or one per axis.
        margin: padding in full-resolution pixels (the reference uses ``fine input size // 8``).
        relative_margin: extra padding as a fraction of the box's longest side (after squaring).
        square: make boxes square / cubic.
        min_size: minimum side length (full-resolution pixels) of a kept box.

    Returns:
        ``(boxes, keep)``: ``int64 [K', 2 * ndim]`` expanded boxes and the indices (into the input) of those kept.

    Example:
        >>> expand_boxes([[2, 2, 4, 3]], image_size=(64, 64), scale=4, margin=2)[0].tolist()
        [[6, 4, 18, 16]]
    """
    arr = _as_int_boxes(boxes).astype(np.float64)
    ndim = arr.shape[1] // 2
    image = np.asarray(image_size, np.int64)
    if image.shape != (ndim,):
        raise ValueError(f"image_size must have {ndim} entries for {ndim}D boxes, got {tuple(image_size)}.")
    if margin < 0 or relative_margin < 0:
        raise ValueError(f"margin and relative_margin must be >= 0, got {margin} and {relative_margin}.")
    factors = np.broadcast_to(np.asarray(scale, np.float64), (ndim,))
    start = np.floor(arr[:, :ndim] * factors + 1e-9).astype(np.int64)
    end = np.ceil(arr[:, ndim:] * factors - 1e-9).astype(np.int64)
    size = end - start
    if square and len(arr):
        longest = size.max(axis=1, keepdims=True)
        start = start - (longest - size) // 2
        size = np.broadcast_to(longest, size.shape).copy()
    pad = margin + np.round(relative_margin * size.max(axis=1, keepdims=True, initial=0)).astype(np.int64)
    start, size = start - pad, size + 2 * pad
    too_long = size > image
    start = np.where(too_long, 0, np.clip(start, 0, np.maximum(image - size, 0)))
    size = np.where(too_long, image, size)
    keep = np.nonzero((size >= min_size).all(axis=1))[0]
    out = np.concatenate([start, start + size], axis=1)[keep]
    return out.astype(np.int64), keep.astype(np.int64)


def jitter_boxes(boxes, max_shift: int = 16, rng: np.random.Generator | None = None) -> np.ndarray:
    """Add a uniform integer in ``[-max_shift, max_shift]`` to every start and every size (the reference's jitter).

    Sizes never drop below 1 voxel. Boxes are not clipped here: ``expand_boxes`` shifts them inside the image.

    Example:
        >>> jitter_boxes([[4, 4, 8, 8]], max_shift=0).tolist()
        [[4, 4, 8, 8]]
    """
    arr = _as_int_boxes(boxes).astype(np.int64)
    rng = np.random.default_rng() if rng is None else rng
    ndim = arr.shape[1] // 2
    start, size = arr[:, :ndim], arr[:, ndim:] - arr[:, :ndim]
    start = start + rng.integers(-max_shift, max_shift + 1, size=start.shape)
    size = np.maximum(size + rng.integers(-max_shift, max_shift + 1, size=size.shape), 1)
    return np.concatenate([start, start + size], axis=1)


def _check_image(img: torch.Tensor, ndim: int, name: str = "img") -> None:
    if img.ndim != ndim + 1:
        raise ValueError(
            f"{name} must be channel-first with {ndim} spatial dims (boxes are {ndim}D), got {tuple(img.shape)}."
        )


def crop_resize_boxes(
    img: torch.Tensor, boxes, output_size: Sequence[int], mode: str = "bilinear"
) -> torch.Tensor:
    """Crop every box of ``img`` and resize it to ``output_size``, all boxes in one resampling call.

    Equal (up to float rounding) to ``Resize(output_size, mode)(SpatialCrop(roi_start, roi_end)(img))`` per box:
    pixel centres are aligned as ``F.interpolate(align_corners=False)`` does, and samples are clamped to the box so
    that pixels outside a box never leak into its crop. A box whose size equals ``output_size`` (scale 1) is read by
    index, in every mode: bit-for-bit the plain crop ``img[:, start:end]``.

    Args:
        img: ``[C, *spatial]`` image (2D or 3D).
        boxes: ``[K, 2 * ndim]`` end-exclusive boxes inside the image.
        output_size: spatial size of every crop.
        mode: ``"bilinear"``/``"trilinear"`` (linear interpolation, for images) or ``"nearest"`` (for labels;
            integer dtype is kept).

    Returns:
        ``[K, C, *output_size]`` tensor on ``img``'s device (float32 for an integer image in a linear mode).

    Raises:
        ValueError: boxes outside the image or empty, ``output_size`` of the wrong length, an unknown ``mode``.

    Example:
        >>> img = torch.arange(16.0).reshape(1, 4, 4)
        >>> crop_resize_boxes(img, [[0, 0, 2, 2]], (2, 2))[0, 0].tolist()
        [[0.0, 1.0], [4.0, 5.0]]
    """
    arr = _as_int_boxes(boxes)
    ndim = arr.shape[1] // 2
    img = torch.as_tensor(img)
    _check_image(img, ndim)
    out_size = tuple(int(s) for s in output_size)
    if len(out_size) != ndim or min(out_size) < 1:
        raise ValueError(f"output_size must be {ndim} positive ints, got {tuple(output_size)}.")
    spatial = np.asarray(img.shape[1:])
    outside = (arr[:, :ndim] < 0).any() or (arr[:, ndim:] > spatial).any() or (arr[:, ndim:] <= arr[:, :ndim]).any()
    if len(arr) and outside:
        raise ValueError(f"boxes must be non-empty and inside the image of size {tuple(spatial)}, got {arr.tolist()}.")
    k, c = len(arr), img.shape[0]
    if k == 0:
        dtype = img.dtype if mode == "nearest" or img.is_floating_point() else torch.float32
        return img.new_zeros((0, c, *out_size), dtype=dtype)
    if mode == "nearest":
        return _gather_nearest(img, arr, out_size)
    if mode not in ("bilinear", "trilinear", "linear"):
        raise ValueError(f"mode must be 'bilinear', 'trilinear' or 'nearest', got {mode!r}.")
    src_img = img if img.is_floating_point() else img.float()
    # a box whose size equals output_size is a plain crop: read it by index, not through grid_sample. Its float32
    # normalised coordinates (2x + 1) / W - 1 are exact only for power-of-two W; unnormalised, they land float32
    # ulps (of values up to W) off the pixel centres, so the bilinear weights mix in the neighbours: errors up to
    # ~1e-6 on a [0, 1] image 37 px wide, ~1e-5 at 500 px, growing with the image size
    unit = (arr[:, ndim:] - arr[:, :ndim] == np.asarray(out_size)).all(axis=1)
    if unit.all():
        return _gather_nearest(src_img, arr, out_size)
    if not unit.any():
        return _sample_linear(src_img, arr, out_size)
    out = src_img.new_empty((k, c, *out_size))
    for sel, fn in ((unit, _gather_nearest), (~unit, _sample_linear)):
        idx = torch.as_tensor(np.nonzero(sel)[0], device=img.device)
        out.index_copy_(0, idx, fn(src_img, arr[sel], out_size))
    return out


def _gather_nearest(img: torch.Tensor, arr: np.ndarray, out_size: tuple[int, ...]) -> torch.Tensor:
    """``[K, C, *out_size]`` crops by torch's legacy "nearest" (source index ``floor(i * in / out)``), one gather.

    At scale 1 (box size == ``out_size``) the index is ``start + i``: the exact crop, dtype kept.
    """
    k, ndim, device = len(arr), len(out_size), img.device
    start = torch.as_tensor(arr[:, :ndim], dtype=torch.float64, device=device)
    length = torch.as_tensor(arr[:, ndim:] - arr[:, :ndim], dtype=torch.float64, device=device)
    index = []
    for d in range(ndim):
        # float32 arithmetic on purpose: it is what ATen's nearest kernel uses, so indices match it exactly
        i = torch.arange(out_size[d], dtype=torch.float32, device=device)
        scale = (length[:, d : d + 1] / out_size[d]).float()
        idx = torch.minimum(torch.floor(i[None] * scale).double(), length[:, d : d + 1] - 1)
        index.append((start[:, d : d + 1] + idx).long())  # [K, n_d]
    shape = [[k] + [1] * ndim for _ in range(ndim)]
    for d in range(ndim):
        shape[d][d + 1] = out_size[d]
    gathered = img[(slice(None), *[index[d].reshape(shape[d]) for d in range(ndim)])]  # [C, K, *out]
    return gathered.movedim(0, 1).contiguous()


def _sample_linear(img: torch.Tensor, arr: np.ndarray, out_size: tuple[int, ...]) -> torch.Tensor:
    """``[K, C, *out_size]`` (multi)linear crops of a floating-point ``img``, all boxes in one ``grid_sample``."""
    k, c, ndim, device = len(arr), img.shape[0], len(out_size), img.device
    spatial = np.asarray(img.shape[1:])
    start = torch.as_tensor(arr[:, :ndim], dtype=torch.float64, device=device)
    length = torch.as_tensor(arr[:, ndim:] - arr[:, :ndim], dtype=torch.float64, device=device)
    coords = []
    for d in range(ndim):
        i = torch.arange(out_size[d], dtype=torch.float64, device=device)
        src = (i[None] + 0.5) * (length[:, d : d + 1] / out_size[d]) - 0.5  # align_corners=False
        src = torch.clamp(src, min=0.0)
        src = torch.minimum(src, length[:, d : d + 1] - 1) + start[:, d : d + 1]
        coords.append(((2 * src + 1) / spatial[d] - 1).to(torch.float32))  # normalised, align_corners=False
    grids = torch.meshgrid(*[torch.arange(n, device=device) for n in out_size], indexing="ij")
    # grid_sample wants the last axis first (x = last spatial axis)
    grid = torch.stack([coords[d][:, grids[d]] for d in reversed(range(ndim))], dim=-1)  # [K, *out, ndim]
    grid = grid.reshape(1, k * out_size[0], *out_size[1:], ndim)
    sampled = F.grid_sample(img[None], grid.to(img.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[0].reshape(c, k, *out_size).movedim(0, 1).contiguous()


def paste_boxes(
    crops: torch.Tensor,
    boxes,
    image_size: Sequence[int],
    reduction: str = "max",
    mode: str = "bilinear",
    fill: float = 0.0,
) -> torch.Tensor:
    """Resize every crop back to its box and fuse them into one ``[C, *image_size]`` map.

    Boxes of equal size are resized together (one ``F.interpolate`` per distinct box size).

    Args:
        crops: ``[K, C, *crop_size]`` predictions, one per box.
        boxes: ``[K, 2 * ndim]`` end-exclusive boxes inside ``image_size``.
        image_size: full-resolution spatial size.
        reduction: ``"or"`` (binary masks: any crop says foreground), ``"max"`` (probabilities) or ``"mean"``
            (average of the crops covering a pixel).
        mode: resampling mode back to the box (``"nearest"`` or linear).
        fill: value of pixels no box covers.

    Returns:
        ``[C, *image_size]`` tensor (``bool`` for ``"or"``).

    Example:
        >>> crops = torch.ones(1, 1, 2, 2)
        >>> paste_boxes(crops, [[1, 1, 3, 3]], (4, 4), reduction="or").int()[0].tolist()
        [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    if reduction not in ("or", "max", "mean"):
        raise ValueError(f"reduction must be 'or', 'max' or 'mean', got {reduction!r}.")
    arr = _as_int_boxes(boxes)
    ndim = arr.shape[1] // 2
    crops = torch.as_tensor(crops)
    if crops.ndim != ndim + 2 or crops.shape[0] != len(arr):
        raise ValueError(
            f"crops must be [K={len(arr)}, C, *crop_size] with {ndim} spatial dims, got {tuple(crops.shape)}."
        )
    size = tuple(int(s) for s in image_size)
    if len(size) != ndim:
        raise ValueError(f"image_size must have {ndim} entries, got {tuple(image_size)}.")
    if len(arr) and ((arr[:, :ndim] < 0).any() or (arr[:, ndim:] > np.asarray(size)).any()):
        raise ValueError(f"boxes must lie inside image_size {size}, got {arr.tolist()}.")
    c = crops.shape[1]
    values = crops.float() if reduction != "or" else (crops > 0.5 if crops.is_floating_point() else crops > 0).float()
    out = torch.full((c, *size), float(fill), dtype=torch.float32, device=crops.device)
    count = torch.zeros((1, *size), dtype=torch.float32, device=crops.device) if reduction == "mean" else None
    if reduction == "mean":
        out.zero_()
    covered = torch.zeros((1, *size), dtype=torch.bool, device=crops.device)
    lengths = arr[:, ndim:] - arr[:, :ndim]
    interp = "nearest" if mode == "nearest" else {2: "bilinear", 3: "trilinear"}[ndim]
    for length in np.unique(lengths, axis=0):
        members = np.nonzero((lengths == length).all(axis=1))[0]
        group = values[torch.as_tensor(members, device=crops.device)]
        if tuple(group.shape[2:]) != tuple(length):
            kwargs = {} if interp == "nearest" else {"align_corners": False}
            group = F.interpolate(group, size=tuple(int(v) for v in length), mode=interp, **kwargs)
        for j, m in enumerate(members):
            region = (slice(None), *[slice(int(arr[m, d]), int(arr[m, ndim + d])) for d in range(ndim)])
            if reduction == "mean":
                out[region] += group[j]
                count[region] += 1
            else:
                prev = torch.where(covered[region], out[region], torch.full_like(out[region], -torch.inf))
                out[region] = torch.maximum(prev, group[j])
            covered[region] = True
    if reduction == "mean":
        out = torch.where(count > 0, out / count.clamp(min=1), torch.full_like(out, float(fill)))
    if reduction == "or":
        return out > 0.5
    return out


def box_crop_affine(affine: torch.Tensor, box: Sequence[int], output_size: Sequence[int]) -> torch.Tensor:
    """Affine of a crop of ``box`` resized to ``output_size``, given the image's ``affine`` (voxel → world).

    Crop voxel ``i`` samples image voxel ``start + (i + 0.5) * L / n - 0.5`` (``align_corners=False``).

    Example:
        >>> box_crop_affine(torch.eye(3), [2, 4, 6, 8], (2, 2))[:2].tolist()
        [[2.0, 0.0, 2.5], [0.0, 2.0, 4.5]]
    """
    ndim = len(output_size)
    affine = torch.as_tensor(affine, dtype=torch.float64)
    box = np.asarray(box, np.float64)
    step = (box[ndim:] - box[:ndim]) / np.asarray(output_size, np.float64)
    local = torch.eye(affine.shape[0], dtype=torch.float64)
    for d in range(min(ndim, affine.shape[0] - 1)):
        local[d, d] = step[d]
        local[d, -1] = box[d] + 0.5 * step[d] - 0.5
    return affine @ local
