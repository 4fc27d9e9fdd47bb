"""Pure tensor functions for foveation: multi-scale (multi field-of-view) patch extraction.

Geometry convention (shared by every foveation component, the WSI reader included):

* Centres are given in pixel (voxel) coordinates of the image, pixel ``i`` having its centre at ``i``.
* All scales of one centre are concentric around the centre ``g`` of the ``output_size`` crop that MONAI's
  ``SpatialCrop(roi_center=c, roi_size=output_size)`` takes, i.e. ``g = c - o // 2 + (o - 1) / 2`` per axis.
  So the scale whose field of view (FoV) equals ``output_size`` is exactly that crop, bit for bit.
* Scale ``d`` covers the box ``[g - s_d / 2, g + s_d / 2]`` (pixel edges); output pixel ``j`` samples at
  ``g - s_d / 2 + (j + 0.5) * s_d / o`` — the ``align_corners=False`` convention of
  ``torch.nn.functional.interpolate``.
* Antialiasing: scale ``d`` is sampled (bilinearly) from the level of a 2x average-pooled image pyramid whose pixel
  size is the largest power of two not above the sampling step ``s_d / o`` (a mip-map, built once per image), instead
  of blurring each patch. For integer factors aligned with the pyramid this is the exact block average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PADDING_MODES",
    "as_size_tuple",
    "build_pyramid",
    "pyramid_level",
    "patch_sample_coords",
    "patch_affines",
    "map_padded_index",
    "multiscale_patches",
]

PADDING_MODES = ("zeros", "constant", "border", "reflect", "symmetric")
# working-set size per chunk of centres (about an L2 cache): larger chunks spill intermediates to memory
_CHUNK_BYTES = 1 << 21


def as_size_tuple(size: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """``size`` (an int or one int per spatial axis) as a tuple of ``ndim`` positive ints; a clear error otherwise."""
    if isinstance(size, (int, np.integer)):
        out = (int(size),) * ndim
    else:
        out = tuple(int(s) for s in size)
        if len(out) != ndim:
            raise ValueError(f"{name} must be an int or have {ndim} entries (one per spatial axis), got {tuple(size)}.")
    if any(s < 1 for s in out):
        raise ValueError(f"{name} must be positive, got {out}.")
    return out


def pyramid_level(step: float) -> int:
    """The mip-map level to sample a scale with sampling step ``step`` (input pixels per output pixel) from.

    The level's pixel size ``2**level`` is the largest power of two that is ``<= step`` (level 0 when upsampling).
    """
    if step <= 1.0:
        return 0
    # the small tolerance keeps exact powers of two (e.g. step 4.0 computed as 3.9999999) on their own level
    return int(math.floor(math.log2(step) + 1e-9))


def build_pyramid(img: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """Mip-map of a channel-first image ``[C, *S]``: level ``l`` is the 2x average pool of level ``l - 1``.

    Odd sizes are handled with ``ceil_mode`` (the last pixel averages only the pixels inside the image).
    Integer images are pooled as float32.

    Example:
        >>> levels = build_pyramid(torch.rand(3, 64, 64), 3)
        >>> [tuple(lv.shape) for lv in levels]
        [(3, 64, 64), (3, 32, 32), (3, 16, 16)]
    """
    ndim = img.ndim - 1
    if ndim not in (2, 3):
        raise ValueError(f"img must be channel-first 2D [C, H, W] or 3D [C, D, H, W], got shape {tuple(img.shape)}.")
    pool = F.avg_pool2d if ndim == 2 else F.avg_pool3d
    levels = [img]
    cur = img if img.is_floating_point() else img.float()
    for _ in range(1, num_levels):
        if min(cur.shape[1:]) < 2:
            break
        if all(s % 2 == 0 for s in cur.shape[1:]):
            # even sizes: the mean of the 2**ndim strided sub-images (faster than the generic pooling kernel)
            acc = None
            for corner in np.ndindex(*([2] * ndim)):
                part = cur[(slice(None),) + tuple(slice(k, None, 2) for k in corner)]
                acc = part.clone() if acc is None else acc.add_(part)
            assert acc is not None
            cur = acc.mul_(1.0 / 2**ndim)
        else:
            cur = pool(cur[None], kernel_size=2, stride=2, ceil_mode=True)[0]
        levels.append(cur)
    return levels


def patch_sample_coords(
    centers: torch.Tensor, patch_size: Sequence[int], output_size: Sequence[int], level: int = 0
) -> list[torch.Tensor]:
    """Per-axis sample coordinates ``[N, o_a]`` (float64, in pixels of pyramid level ``level``) of one scale.

    See the module docstring for the convention; level ``l`` pixel ``i`` has its centre at level-0 coordinate
    ``i * 2**l + (2**l - 1) / 2``.
    """
    f = float(2**level)
    coords = []
    for a, (s, o) in enumerate(zip(patch_size, output_size)):
        g = centers[:, a] - (o // 2) + (o - 1) / 2.0
        j = torch.arange(o, dtype=torch.float64, device=centers.device)
        x0 = g[:, None] - s / 2.0 + (j[None] + 0.5) * (s / o)
        coords.append((x0 - (f - 1) / 2.0) / f)
    return coords


def patch_affines(
    centers: torch.Tensor, patch_sizes: Sequence[Sequence[int]], output_size: Sequence[int]
) -> torch.Tensor:
    """Voxel-to-image-voxel affines ``[N, D, ndim + 1, ndim + 1]`` (float64) of each patch.

    Patch voxel ``j`` of scale ``d`` maps to image voxel ``x0 + j * step`` per axis; compose with the image affine
    to get each patch's world affine.
    """
    centers = centers.to(torch.float64)
    n, ndim = centers.shape
    out = torch.zeros(n, len(patch_sizes), ndim + 1, ndim + 1, dtype=torch.float64, device=centers.device)
    out[..., ndim, ndim] = 1.0
    for d, ps in enumerate(patch_sizes):
        for a, (s, o) in enumerate(zip(ps, output_size)):
            step = s / o
            g = centers[:, a] - (o // 2) + (o - 1) / 2.0
            out[:, d, a, a] = step
            out[:, d, a, ndim] = g - s / 2.0 + 0.5 * step
    return out


def map_padded_index(idx: torch.Tensor, size: int, padding_mode: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Map integer indices that may leave ``[0, size)`` back inside according to ``padding_mode``.

    Returns the mapped indices and, for ``zeros``/``constant``, a boolean mask of the indices that were inside
    (``None`` for the other modes, where every index reads a real pixel).
    ``reflect`` mirrors without repeating the edge pixel (numpy/torch ``reflect``), ``symmetric`` repeats it,
    ``border`` repeats the edge pixel (``replicate``).
    """
    if padding_mode in ("zeros", "constant"):
        inside = (idx >= 0) & (idx < size)
        return idx.clamp(0, size - 1), inside
    if padding_mode == "border":
        return idx.clamp(0, size - 1), None
    if padding_mode == "reflect":
        if size == 1:
            return torch.zeros_like(idx), None
        period = 2 * (size - 1)
        r = torch.remainder(idx, period)
        return torch.where(r >= size, period - r, r), None
    if padding_mode == "symmetric":
        period = 2 * size
        r = torch.remainder(idx, period)
        return torch.where(r >= size, period - 1 - r, r), None
    raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}.")


def _axis_taps(
    coords: torch.Tensor, size: int, padding_mode: str, interp: str, dtype: torch.dtype
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Interpolation taps along one axis: a list of (index [N, o], weight [N, o] or None meaning 1)."""
    if interp == "nearest":
        # round half up, as index = floor(x + 0.5); exact for the unit-step integer case
        idx = torch.floor(coords + 0.5).to(torch.int64)
        idx, inside = map_padded_index(idx, size, padding_mode)
        return [(idx, None if inside is None else inside.to(dtype))]
    lo = torch.floor(coords)
    frac = coords - lo
    lo = lo.to(torch.int64)
    idx0, in0 = map_padded_index(lo, size, padding_mode)
    if not bool((frac != 0).any()):
        # integer sample positions: a pure gather, so unit-step scales are bit-identical crops
        return [(idx0, None if in0 is None else in0.to(dtype))]
    idx1, in1 = map_padded_index(lo + 1, size, padding_mode)
    w1 = frac.to(dtype)
    w0 = (1.0 - frac).to(dtype)
    if in0 is not None:
        w0 = w0 * in0.to(dtype)
        w1 = w1 * in1.to(dtype)
    return [(idx0, w0), (idx1, w1)]


def _sample_scale(
    level_img: torch.Tensor, coords: list[torch.Tensor], padding_mode: str, value: float, interp: str, out: torch.Tensor
) -> None:
    """Separable (multi)linear sampling of ``level_img [C, *S]`` at the tensor-product grid ``coords``.

    Writes ``[N, C, *o]`` into ``out``. Every pixel of every patch is read with one flat ``index_select`` per
    interpolation corner (2**ndim corners at most, 1 for integer positions), over all centres at once, and the
    weighted corners are accumulated straight into ``out``.
    """
    spatial = level_img.shape[1:]
    ndim = len(spatial)
    n = coords[0].shape[0]
    osize = [x.shape[1] for x in coords]
    dtype = out.dtype
    taps = [_axis_taps(coords[a], spatial[a], padding_mode, interp, dtype) for a in range(ndim)]
    pix_strides = [int(np.prod(spatial[a + 1 :])) for a in range(ndim)]
    chans = [flat_c.reshape(-1) for flat_c in (level_img if level_img.dtype == dtype else level_img.to(dtype))]
    need_fill = padding_mode == "constant" and value != 0
    # int32 flat indices when they fit: half the index traffic, and index_select is faster with them
    idx_dtype = torch.int32 if int(np.prod(spatial)) < 2**31 else torch.int64
    taps = [[(i.to(idx_dtype), w) for i, w in axis] for axis in taps]

    def _bcast(t: torch.Tensor, a: int) -> torch.Tensor:
        shape = [n] + [1] * ndim
        shape[1 + a] = osize[a]
        return t.reshape(shape)

    weight_sum: torch.Tensor | None = None
    for k_corner, corner in enumerate(np.ndindex(*[len(t) for t in taps])):
        lin = None
        wgt = None
        for a, k in enumerate(corner):
            idx, w = taps[a][k]
            term = _bcast(idx * pix_strides[a], a)
            lin = term if lin is None else lin + term
            if w is not None:
                wb = _bcast(w, a)
                wgt = wb if wgt is None else wgt * wb
        assert lin is not None
        lin = lin.expand(n, *osize).reshape(-1)
        if wgt is not None and need_fill:
            weight_sum = wgt if weight_sum is None else weight_sum + wgt
        # one gather per channel (C is small): cheaper than building an index that includes channel offsets
        for ci, src in enumerate(chans):
            vals = src.index_select(0, lin).view(n, *osize)
            dst = out[:, ci]
            if k_corner == 0:
                dst.copy_(vals) if wgt is None else torch.mul(vals, wgt, out=dst)
            elif wgt is None:
                dst.add_(vals)
            else:
                dst.addcmul_(vals, wgt)
    if padding_mode == "constant" and value != 0 and weight_sum is not None:
        # the part of each sample that fell outside the image takes the constant value
        out.add_((value * (1.0 - weight_sum.to(torch.float64))).to(dtype)[:, None])


def _sample_unit_step(
    level_img: torch.Tensor,
    first: torch.Tensor,
    osize: Sequence[int],
    padding_mode: str,
    value: float,
    out: torch.Tensor,
) -> None:
    """Fast path for a sampling step of exactly one level pixel on every axis (any scale equal to
    ``output_size * 2**level``): positions are ``first[n] + j``, so each patch is a ``(o + 1)``-window shifted by a
    constant sub-pixel fraction. One gather of the windows, then (multi)linear weights per centre on shifted
    slices, accumulated straight into ``out`` — about one read per output pixel instead of ``2**ndim``. Integer
    positions (fraction 0) are a pure gather: bit-identical crops.

    Args:
        first: ``[N, ndim]`` float64 position (in level pixels) of each patch's first sample.
        out: ``[N, C, *o]`` destination.
    """
    c = level_img.shape[0]
    spatial = level_img.shape[1:]
    ndim = len(spatial)
    n = first.shape[0]
    dtype = out.dtype
    lo = torch.floor(first)
    frac = first - lo
    lo = lo.to(torch.int64)
    has_frac = [bool((frac[:, a] != 0).any()) for a in range(ndim)]
    wsize = [o + 1 if f else o for o, f in zip(osize, has_frac)]
    chans = [ch.reshape(-1) for ch in (level_img if level_img.dtype == dtype else level_img.to(dtype))]
    idx_dtype = torch.int32 if int(np.prod(spatial)) < 2**31 else torch.int64
    lin = None
    masks = []
    stride = 1
    for a in reversed(range(ndim)):
        idx = lo[:, a, None] + torch.arange(wsize[a], device=lo.device)[None]
        idx, inside = map_padded_index(idx, spatial[a], padding_mode)
        idx = idx.to(idx_dtype)
        shape = [n] + [1] * ndim
        shape[1 + a] = wsize[a]
        term = (idx * stride).reshape(shape)
        lin = term if lin is None else lin + term
        if inside is not None and not bool(inside.all()):
            masks.append(inside.reshape(shape))
        stride *= spatial[a]
    assert lin is not None
    lin = lin.expand(n, *wsize).reshape(-1)
    mask = None
    for m in masks:
        mask = m if mask is None else mask & m
    fill = torch.as_tensor(value if padding_mode == "constant" else 0.0, dtype=dtype, device=lo.device)
    corners = list(np.ndindex(*[2 if f else 1 for f in has_frac]))
    weights = []
    for corner in corners:
        w = None
        for a, k in enumerate(corner):
            if has_frac[a]:
                wa = frac[:, a] if k == 1 else 1.0 - frac[:, a]
                w = wa if w is None else w * wa
        weights.append(None if w is None else w.to(dtype).reshape(n, *([1] * ndim)))
    # per channel (C is small): gather the windows, then accumulate the shifted, weighted slices into ``out``
    for ci, src in enumerate(chans):
        win = src.index_select(0, lin).view(n, *wsize)
        if mask is not None:
            win = torch.where(mask, win, fill)
        dst = out[:, ci]
        for k_corner, (corner, wb) in enumerate(zip(corners, weights)):
            sl = (slice(None),) + tuple(slice(k, k + o) for k, o in zip(corner, osize))
            if wb is None:
                dst.copy_(win[sl])
            elif k_corner == 0:
                torch.mul(win[sl], wb, out=dst)
            else:
                dst.addcmul_(win[sl], wb)


def multiscale_patches(
    img: torch.Tensor | np.ndarray,
    centers: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    patch_sizes: Sequence[int | Sequence[int]],
    output_size: int | Sequence[int],
    padding_mode: str = "zeros",
    antialias: bool = True,
    value: float = 0.0,
    mode: str = "bilinear",
    pyramid: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """D concentric patches per centre, each of field of view ``patch_sizes[d]`` resampled to ``output_size``.

    Vectorised over all N centres (one gather per interpolation corner and scale, no loop over patches), 2D and
    3D, on the device of ``img``.

    Args:
        img: channel-first image ``[C, H, W]`` or ``[C, D, H, W]`` (numpy or torch, any device).
        centers: ``[N, ndim]`` centres in pixel (voxel) coordinates of ``img`` (integers for exact crops).
        patch_sizes: D fields of view, each an int or one int per axis (ascending by convention).
        output_size: pixels per patch (int or per axis); the same for every scale.
        padding_mode: how to fill outside the image: ``"zeros"``, ``"constant"`` (with ``value``), ``"border"``
            (repeat the edge), ``"reflect"`` (mirror, edge not repeated) or ``"symmetric"`` (edge repeated).
        antialias: sample each downsampling scale from the nearest mip-map level (see module docstring);
            ``False`` samples every scale from the full-resolution image (aliasing, like the reference code).
        value: fill value for ``padding_mode="constant"``.
        mode: ``"bilinear"`` (multilinear) or ``"nearest"`` (for label maps; never mixes label values — use
            ``antialias=False`` with labels, as pooling a label map makes no sense).
        pyramid: a precomputed ``build_pyramid(img, L)`` to reuse across calls on the same image.

    Returns:
        Tensor ``[N, D, C, *output_size]``; float images keep their dtype, integer images give float32 for
        ``bilinear`` and keep their dtype for ``nearest``.

    Example:
        >>> img = torch.arange(64.0).reshape(1, 8, 8)
        >>> p = multiscale_patches(img, [[4, 4]], patch_sizes=[2, 4], output_size=2)
        >>> p.shape
        torch.Size([1, 2, 1, 2, 2])
        >>> torch.equal(p[0, 0, 0], img[0, 3:5, 3:5])
        True
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}.")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}.")
    img_t = torch.as_tensor(np.ascontiguousarray(img)) if isinstance(img, np.ndarray) else img
    if not isinstance(img_t, torch.Tensor):
        raise TypeError(f"img must be a numpy array or torch tensor, got {type(img).__name__}.")
    img_t = img_t.as_tensor() if hasattr(img_t, "as_tensor") else img_t  # MetaTensor -> plain tensor
    ndim = img_t.ndim - 1
    if ndim not in (2, 3):
        raise ValueError(f"img must be channel-first [C, H, W] or [C, D, H, W], got shape {tuple(img_t.shape)}.")
    device = img_t.device
    ctr = torch.as_tensor(np.asarray(centers) if not isinstance(centers, torch.Tensor) else centers)
    ctr = ctr.to(device=device, dtype=torch.float64)
    if ctr.ndim != 2 or ctr.shape[1] != ndim:
        raise ValueError(f"centers must have shape [N, {ndim}] for a {ndim}D image, got {tuple(ctr.shape)}.")
    if len(patch_sizes) == 0:
        raise ValueError("patch_sizes must hold at least one field of view.")
    osize = as_size_tuple(output_size, ndim, "output_size")
    sizes = [as_size_tuple(s, ndim, f"patch_sizes[{d}]") for d, s in enumerate(patch_sizes)]

    if mode == "nearest":
        out_dtype = img_t.dtype
    else:
        out_dtype = img_t.dtype if img_t.is_floating_point() else torch.float32
    n = ctr.shape[0]
    out = torch.empty((n, len(sizes), img_t.shape[0], *osize), dtype=out_dtype, device=device)
    if n == 0:
        return out

    use_pyramid = antialias and mode == "bilinear"
    levels = [pyramid_level(min(s / o for s, o in zip(ps, osize))) if use_pyramid else 0 for ps in sizes]
    if pyramid is None:
        if img_t.dtype != out_dtype:
            img_t = img_t.to(out_dtype)
        pyramid = build_pyramid(img_t, max(levels) + 1) if max(levels) > 0 else [img_t]
    # centres in chunks whose intermediates stay in cache (a loop over chunks, never over single patches)
    per_patch = img_t.shape[0] * int(np.prod([o + 1 for o in osize])) * out.element_size()
    chunk = max(1, int(_CHUNK_BYTES // per_patch))
    for d, ps in enumerate(sizes):
        lvl = min(levels[d], len(pyramid) - 1)
        unit_step = mode == "bilinear" and all(s == o * 2**lvl for s, o in zip(ps, osize))
        for i in range(0, n, chunk):
            coords = patch_sample_coords(ctr[i : i + chunk], ps, osize, lvl)
            if unit_step:
                first = torch.stack([x[:, 0] for x in coords], dim=1)
                _sample_unit_step(pyramid[lvl], first, osize, padding_mode, float(value), out[i : i + chunk, d])
            else:
                _sample_scale(pyramid[lvl], coords, padding_mode, float(value), mode, out[i : i + chunk, d])
    return out
