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
from typing import NamedTuple

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
# whole-number sampling steps are read through strided views (``_sample_integer_step``) when a scale has at least
# this many output elements; below it the fast path's fixed per-call overhead outweighs its gain (measured on CPU).
# Tests set it to 0 (always) or a huge number (never) to compare the two paths.
_FAST_PATH_MIN_ELEMENTS = 1 << 18
# the fast path copies (pads or converts) a level only when the copy has at most this many elements per output
# element it serves: the general path costs several copies per output element
_PREP_COPY_FACTOR = 4


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
        # g - s/2 + (j + 0.5) * s/o written as one correctly rounded quotient of whole numbers: exact whenever the
        # position is a whole or half pixel, so the centre sample of an odd output_size is the centre pixel itself
        x0 = g[:, None] + (2.0 * j[None] + 1.0 - o) * s / (2.0 * o)
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


def _chunk_size(c: int, osize: Sequence[int], element_size: int) -> int:
    """Centres per chunk so that one chunk's intermediates (``[n, C, *(o + 1)]``) stay in cache."""
    per_patch = c * int(np.prod([o + 1 for o in osize])) * element_size
    return max(1, int(_CHUNK_BYTES // per_patch))


def _sample_general(
    level_img: torch.Tensor,
    centers: torch.Tensor,
    patch_size: Sequence[int],
    osize: Sequence[int],
    level: int,
    mode: str,
    padding_mode: str,
    value: float,
    out: torch.Tensor,
) -> None:
    """One scale ``[N, C, *o]`` of every centre by (multi)linear or nearest sampling: any step, any padding."""
    n = centers.shape[0]
    # centres in chunks whose intermediates stay in cache (a loop over chunks, never over single patches)
    chunk = _chunk_size(level_img.shape[0], osize, out.element_size())
    unit_step = mode == "bilinear" and all(s == o * 2**level for s, o in zip(patch_size, osize))
    for i in range(0, n, chunk):
        coords = patch_sample_coords(centers[i : i + chunk], patch_size, osize, level)
        if unit_step:
            first = torch.stack([x[:, 0] for x in coords], dim=1)
            _sample_unit_step(level_img, first, osize, padding_mode, value, out[i : i + chunk])
        else:
            _sample_scale(level_img, coords, padding_mode, value, mode, out[i : i + chunk])


def _integer_steps(patch_size: Sequence[int], osize: Sequence[int], level: int) -> tuple[int, ...] | None:
    """The sampling step per axis in pixels of ``level`` when it is a whole number on every axis, else ``None``."""
    f = 2**level
    if any(s % (o * f) for s, o in zip(patch_size, osize)):
        return None
    return tuple(s // (o * f) for s, o in zip(patch_size, osize))


class _IntegerStepPlan(NamedTuple):
    """Where the patches of one whole-number-step scale read their level (see ``_sample_integer_step``)."""

    steps: tuple[int, ...]  # sampling step per axis, in level pixels
    lo: torch.Tensor  # [N, ndim] int64 level pixel of each patch's first (multi)linear corner
    frac: torch.Tensor  # [N, ndim] float64 sub-pixel fraction, the same for every sample of a patch
    taps: tuple[int, ...]  # 1 or 2 (multi)linear taps per axis
    extent: tuple[int, ...]  # last pixel read, relative to ``lo``, per axis


def _plan_integer_step(
    first: torch.Tensor, steps: tuple[int, ...], osize: Sequence[int], mode: str
) -> _IntegerStepPlan:
    """Split each patch's first sample position ``first [N, ndim]`` into integer pixel and fraction."""
    if mode == "nearest":
        # round half up, as the general path does: floor(x + j * k + 0.5) == floor(x + 0.5) + j * k
        lo = torch.floor(first + 0.5)
        frac = torch.zeros_like(first)
    else:
        lo = torch.floor(first)
        frac = first - lo
    # a second (multi)linear tap only along axes where some patch has a sub-pixel fraction
    taps = tuple(2 if bool((frac[:, a] != 0).any()) else 1 for a in range(first.shape[1]))
    extent = tuple((o - 1) * k + t - 1 for o, k, t in zip(osize, steps, taps))
    return _IntegerStepPlan(steps, lo.to(torch.int64), frac, taps, extent)


def _pad_level(
    level_img: torch.Tensor,
    before: Sequence[int],
    after: Sequence[int],
    padding_mode: str,
    value: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Contiguous ``level_img [C, *S]`` (as ``dtype``) padded by ``before``/``after`` pixels per axis, with the
    values the general path reads outside the image (``map_padded_index``; ``zeros``/``constant``: 0/``value``)."""
    spatial = level_img.shape[1:]
    ndim = len(spatial)
    padded = level_img.new_empty(
        (level_img.shape[0], *[b + s + e for b, s, e in zip(before, spatial, after)]), dtype=dtype
    )
    centre = [slice(b, b + s) for b, s in zip(before, spatial)]
    # the bulk is one contiguous copy; then the margins, axis by axis, from what is already in place: axes done
    # before ``a`` are read over their padded extent (corners included), later axes over the image only
    padded[(slice(None), *centre)].copy_(level_img)
    for a in range(ndim):
        b, s, e = before[a], spatial[a], after[a]
        region = [slice(None)] * a + [slice(None)] + centre[a + 1 :]
        for start, length, first in ((0, b, -b), (b + s, e, s)):
            if length == 0:
                continue
            src_idx = torch.arange(first, first + length, device=level_img.device)
            idx, inside = map_padded_index(src_idx, s, padding_mode)
            dst_sl = list(region)
            dst_sl[a] = slice(start, start + length)
            dst = padded[(slice(None), *dst_sl)]
            if inside is not None:
                dst.fill_(value if padding_mode == "constant" else 0.0)
            else:
                dst.copy_(padded[(slice(None), *region)].index_select(1 + a, idx + b))
    return padded


def _prepare_level(
    level_img: torch.Tensor,
    plans: Sequence[_IntegerStepPlan],
    osize: Sequence[int],
    dtype: torch.dtype,
    padding_mode: str,
    value: float,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The contiguous level (in ``dtype``) that ``_sample_integer_step`` reads for ``plans``, and the offset
    ``[ndim]`` of the image's pixel 0 in it; ``None`` when preparing it would cost more than it saves.

    Padding it (by what its patches need, with ``padding_mode``) makes the patches near or over the border plain
    strided reads too, but copies the whole level: it is done only when that copy is small next to the border
    patches it serves (the general path costs several copies per output pixel). Likewise a level that must be
    converted first (dtype, layout) is used only if the copy is small next to all the patches. The margin is
    capped by the largest patch extent, so a centre far outside the image cannot blow up memory (such patches
    take the general path).
    """
    c, *spatial = level_img.shape
    ndim = len(spatial)
    per_patch = c * int(np.prod(osize))
    size = torch.tensor(spatial, device=level_img.device)
    border_work = 0
    before, after = [], []
    for p in plans:
        extent = torch.tensor(p.extent, device=level_img.device)
        outside = ((p.lo < 0) | (p.lo + extent >= size)).any(dim=1)
        border_work += int(outside.sum()) * per_patch
    for a in range(ndim):
        cap = max(p.extent[a] for p in plans) + 1
        need_b = max(int(-p.lo[:, a].min()) for p in plans)
        need_e = max(int((p.lo[:, a] + p.extent[a]).max()) - (spatial[a] - 1) for p in plans)
        before.append(min(max(need_b, 0), cap))
        after.append(min(max(need_e, 0), cap))
    padded_numel = c * int(np.prod([b + s + e for b, s, e in zip(before, spatial, after)]))
    if border_work > 0 and padded_numel <= _PREP_COPY_FACTOR * border_work:
        offset = torch.tensor(before, device=size.device)
        return _pad_level(level_img, before, after, padding_mode, value, dtype), offset
    no_offset = torch.zeros(ndim, dtype=torch.int64, device=size.device)
    if level_img.dtype == dtype and level_img.is_contiguous():
        return level_img, no_offset
    work = len(plans) * plans[0].lo.shape[0] * per_patch
    if level_img.numel() <= _PREP_COPY_FACTOR * work:
        return level_img.to(dtype).contiguous(), no_offset
    return None


def _blend_level(
    level_img: torch.Tensor, corners: Sequence[tuple[int, ...]], weights: Sequence[float], taps: Sequence[int]
) -> torch.Tensor:
    """``level_img`` with pixel ``i`` replaced by the weighted sum of its (multi)linear ``corners``
    (``i + corner``), accumulated in the same order and dtype as the per-patch blending: the same results.

    The last ``taps - 1`` pixels per axis have no full set of corners and are left uninitialised: the fast path
    reads only patches that lie inside the level, which never reach them.
    """
    c, *spatial = level_img.shape
    valid = [s - (t - 1) for s, t in zip(spatial, taps)]
    out = torch.empty_like(level_img)
    wts = [torch.tensor(w, dtype=level_img.dtype, device=level_img.device) for w in weights]
    # blocks of the first axis, so that the 2**ndim passes over a block run in cache
    row_bytes = c * int(np.prod(spatial[1:])) * level_img.element_size()
    block = max(1, int(_CHUNK_BYTES // row_bytes))
    for r0 in range(0, valid[0], block):
        r1 = min(r0 + block, valid[0])
        dst = out[(slice(None), slice(r0, r1), *[slice(0, v) for v in valid[1:]])]
        for k, (corner, wt) in enumerate(zip(corners, wts)):
            rows = slice(r0 + corner[0], r1 + corner[0])
            src = level_img[(slice(None), rows, *[slice(q, q + v) for q, v in zip(corner[1:], valid[1:])])]
            if k == 0:
                torch.mul(src, wt, out=dst)
            else:
                dst.addcmul_(src, wt)
    return out


def _sample_integer_step(
    level_img: torch.Tensor,
    plan: _IntegerStepPlan,
    out: torch.Tensor,
    blended: dict[tuple[float, ...], torch.Tensor],
) -> torch.Tensor:
    """Fast path for a whole-number sampling step ``k`` on every axis (e.g. power-of-two fields of view).

    Then patch ``n`` samples ``lo[n] + frac[n] + j * k``: its integer part is a lattice that one strided view of
    the level holds for every start pixel at once (``as_strided``: row ``p`` is the patch starting at flat pixel
    ``p``), so the patches of one (multi)linear corner are one ``index_select`` of rows of that view — a
    memory-bound copy, with no per-pixel index tensor and no scattered reads. The fraction is the same for every
    sample of a patch, so each corner has one weight per patch. Integer positions (and ``nearest``) need one
    corner: a plain, bit-identical crop.

    Only patches that lie inside ``level_img`` are written (the caller pads the level when that pays off); the
    others are left for the general path and returned (all of them, unwritten, when they are the majority).

    Args:
        level_img: contiguous ``[C, *S]`` in the dtype of ``out``; ``plan.lo`` is in its pixels.
        plan: from ``_plan_integer_step``.
        out: ``[N, C, *o]`` destination.
        blended: cache of ``level_img`` blended for one sub-pixel fraction (see ``_blend_level``), keyed by the
            fraction, shared by the scales that read this level.

    Returns:
        int64 indices of the patches left to the general path (not written).
    """
    c, *spatial = level_img.shape
    ndim = len(spatial)
    lo, frac, taps, steps = plan.lo, plan.frac, plan.taps, plan.steps
    n = lo.shape[0]
    osize = out.shape[2:]
    dtype = out.dtype
    extent = torch.tensor(plan.extent, device=lo.device)
    size = torch.tensor(spatial, device=lo.device)
    inside = ((lo >= 0) & (lo + extent < size)).all(dim=1)
    border = (~inside).nonzero().squeeze(1)
    n_inside = n - border.numel()
    if 2 * n_inside < n:
        # mostly border patches: one general pass over all is cheaper than both paths and the merge
        return torch.arange(n, device=lo.device)
    pix_strides = [int(np.prod(spatial[a + 1 :])) for a in range(ndim)]
    numel = int(np.prod(spatial))
    span = sum((o - 1) * k * st for o, k, st in zip(osize, steps, pix_strides))
    # every start p in [0, numel - span) keeps a patch's samples inside its channel; channel c starts at c * numel
    windows = level_img.as_strided(
        (numel - span, c, *osize), (1, numel, *[k * st for k, st in zip(steps, pix_strides)])
    )
    # patches outside get any valid start (0): the caller overwrites them
    lo = torch.where(inside[:, None], lo, torch.zeros_like(lo))
    start = (lo * torch.tensor(pix_strides, device=lo.device)).sum(dim=1)
    corners = list(np.ndindex(*taps))
    if len(corners) == 1:
        torch.index_select(windows, 0, start, out=out)
        return border
    # per-patch corner weights, multiplied in the same order and dtype as the general path's per-pixel weights
    weights = []
    for corner in corners:
        w = None
        for a, k in enumerate(corner):
            if taps[a] == 2:
                wa = (frac[:, a] if k == 1 else 1.0 - frac[:, a]).to(dtype)
                w = wa if w is None else w * wa
        assert w is not None
        weights.append(w.reshape(n, *([1] * (ndim + 1))))
    offsets = [sum(k * st for k, st in zip(corner, pix_strides)) for corner in corners]
    if bool((frac == frac[:1]).all()):
        # one fraction for every patch (e.g. integer centres with a step that is not one level pixel): blend the
        # corners over the whole level once (shared by the scales with this fraction), then one gather per patch —
        # worth it when the level has fewer pixels than the corner reads it saves
        key = tuple(frac[0].tolist())
        if key not in blended and int(np.prod(spatial)) <= (len(corners) - 1) * n_inside * int(np.prod(osize)):
            blended[key] = _blend_level(level_img, corners, [float(w.reshape(-1)[0]) for w in weights], taps)
        if key in blended:
            pre = blended[key].as_strided(windows.shape, windows.stride())
            torch.index_select(pre, 0, start, out=out)
            return border
    # chunks of centres so that the destination and the gathered corner stay in cache between the passes
    chunk = _chunk_size(c, osize, out.element_size())
    buf = torch.empty((min(chunk, n), c, *osize), dtype=dtype, device=out.device)
    for i in range(0, n, chunk):
        dst = out[i : i + chunk]
        tmp = buf[: dst.shape[0]]
        for k_corner, (off, w) in enumerate(zip(offsets, weights)):
            if k_corner == 0:
                torch.index_select(windows, 0, start[i : i + chunk] + off, out=dst)
                dst.mul_(w[i : i + chunk])
            else:
                torch.index_select(windows, 0, start[i : i + chunk] + off, out=tmp)
                dst.addcmul_(tmp, w[i : i + chunk])
    return border


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
    3D, on the device of ``img``. Scales whose sampling step is a whole number of pixels on their level (e.g.
    power-of-two fields of view) are read as strided crops of the (padded) level, a memory-bound copy; the others
    are interpolated. Both give the same values.

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
    plans: dict[int, _IntegerStepPlan] = {}
    if n * img_t.shape[0] * int(np.prod(osize)) >= _FAST_PATH_MIN_ELEMENTS:
        for d, ps in enumerate(sizes):
            lvl = min(levels[d], len(pyramid) - 1)
            steps = _integer_steps(ps, osize, lvl)
            if steps is not None:
                first = torch.stack([x[:, 0] for x in patch_sample_coords(ctr, ps, osize, lvl)], dim=1)
                plans[d] = _plan_integer_step(first, steps, osize, mode)
    # each level read by the fast path is prepared once (padded, or used as it is) and shared by its scales
    prepared: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}
    blended: dict[int, dict[tuple[float, ...], torch.Tensor]] = {}
    for lvl in sorted({min(levels[d], len(pyramid) - 1) for d in plans}):
        level_plans = [p for d, p in plans.items() if min(levels[d], len(pyramid) - 1) == lvl]
        prepared[lvl] = _prepare_level(pyramid[lvl], level_plans, osize, out_dtype, padding_mode, float(value))
        if prepared[lvl] is None:
            for d in [d for d in plans if min(levels[d], len(pyramid) - 1) == lvl]:
                del plans[d]
    for d, ps in enumerate(sizes):
        lvl = min(levels[d], len(pyramid) - 1)
        if d not in plans:
            _sample_general(pyramid[lvl], ctr, ps, osize, lvl, mode, padding_mode, float(value), out[:, d])
            continue
        lev_offset = prepared[lvl]
        assert lev_offset is not None
        lev, offset = lev_offset
        plan = plans[d]
        cache = blended.setdefault(lvl, {})
        border = _sample_integer_step(lev, plan._replace(lo=plan.lo + offset), out[:, d], cache)
        if border.numel() == n:
            _sample_general(pyramid[lvl], ctr, ps, osize, lvl, mode, padding_mode, float(value), out[:, d])
        elif border.numel() > 0:
            # patches that reach outside the prepared level: the general path
            part = torch.empty((border.numel(), *out.shape[2:]), dtype=out_dtype, device=device)
            _sample_general(pyramid[lvl], ctr[border], ps, osize, lvl, mode, padding_mode, float(value), part)
            out[:, d].index_copy_(0, border, part)
    return out
