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
* Resampling: one batched ``F.grid_sample`` per scale on its level, the padding applied by folding the sample
  positions into the image, on a power-of-two window of the level so whole-pixel positions stay exact;
  ``nearest`` is a gather (round half up, any dtype); whole-number steps take the strided path of
  ``strided.py``.
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
# samples per F.grid_sample call: bounds the grid (ndim floats per sample) and the call's output
_GRID_CHUNK_SAMPLES = 1 << 20


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


def _fold_coords(x: torch.Tensor, size: int, padding_mode: str) -> torch.Tensor:
    """Sample positions ``x`` (level pixels) moved to where the image itself gives the same (multi)linear value.

    ``zeros``/``constant``: clamped to ``[-1, size]`` (further out there is only padding); ``border``: clamped to
    the image; ``reflect``/``symmetric``: folded into the image. The padded image is periodic and mirrored about
    pixel centres (``reflect``) or pixel edges (``symmetric``, flat within half a pixel of them), so linear
    interpolation commutes with the fold. Whole-pixel positions stay whole.
    """
    if padding_mode in ("zeros", "constant"):
        return x.clamp(-1.0, float(size))
    if padding_mode == "border" or size == 1:
        return x.clamp(0.0, float(size - 1))
    if padding_mode == "reflect":
        period = 2.0 * (size - 1)
        r = torch.remainder(x, period)
        return torch.where(r > size - 1, period - r, r)
    if padding_mode == "symmetric":
        period = 2.0 * size
        r = torch.remainder(x + 0.5, period)
        return (torch.where(r > size, period - r, r) - 0.5).clamp(0.0, float(size - 1))
    raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}.")


def _pow2_window(
    level_img: torch.Tensor, coords: Sequence[torch.Tensor], dtype: torch.dtype
) -> tuple[torch.Tensor, list[int]]:
    """The box of ``level_img`` that the folded positions ``coords`` read, with power-of-two sides, in ``dtype``,
    and its first pixel per axis.

    ``grid_sample`` takes positions normalised by the input size: ``(2 x + 1) / W - 1``. For a power-of-two ``W``
    that is a short binary fraction, so whole and half pixel positions survive float32 exactly (a crop is bit for
    bit the image); for other sizes they come back off by an ulp and mix in a neighbour. The box is a view of the
    level when it fits inside, else a zero-filled copy. It never starts before pixel 0 and never ends past the
    image inside the level, so the ``zeros`` padding of ``grid_sample`` supplies pixel ``-1`` and ``size``.
    """
    c, *spatial = level_img.shape
    starts, sides = [], []
    for x, s in zip(coords, spatial):
        lo = max(int(torch.floor(x.min())), 0)
        hi = max(min(int(torch.floor(x.max())) + 1, s - 1), lo)
        w = 1 << (hi - lo).bit_length()  # the smallest power of two >= hi - lo + 1
        starts.append(min(lo, s - w) if w <= s else lo)
        sides.append(w)
    if all(w <= s for w, s in zip(sides, spatial)):
        win = level_img[(slice(None), *[slice(b, b + w) for b, w in zip(starts, sides)])]
        return win.to(dtype), starts
    win = level_img.new_zeros((c, *sides), dtype=dtype)
    src = [slice(b, min(b + w, s)) for b, w, s in zip(starts, sides, spatial)]
    win[(slice(None), *[slice(0, t.stop - t.start) for t in src])] = level_img[(slice(None), *src)]
    return win, starts


def _grid_sample(
    level_img: torch.Tensor, coords: Sequence[torch.Tensor], padding_mode: str, value: float, out: torch.Tensor
) -> None:
    """(Multi)linear samples of ``level_img [C, *S]`` at the tensor-product positions ``coords`` (per axis
    ``[N, o_a]``, level pixels) into ``out [N, C, *o]``: batched ``F.grid_sample`` calls (``align_corners=False``,
    pixel ``i`` centred at ``i`` as in ``patch_sample_coords``), in chunks of centres to bound the grid's memory.
    ``padding_mode`` is applied by folding the positions (``_fold_coords``); ``constant`` adds ``value`` times the
    part of each sample's weight that falls outside the image."""
    spatial = level_img.shape[1:]
    ndim = len(spatial)
    n = coords[0].shape[0]
    osize = [x.shape[1] for x in coords]
    dtype = out.dtype
    coords = [_fold_coords(x, s, padding_mode) for x, s in zip(coords, spatial)]
    win, starts = _pow2_window(level_img, coords, dtype)
    norm = [((2.0 * (x - b) + 1.0) / w - 1.0).to(dtype) for x, b, w in zip(coords, starts, win.shape[1:])]
    fill = padding_mode == "constant" and value != 0
    chunk = max(1, _GRID_CHUNK_SAMPLES // int(np.prod(osize)))
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        grid = torch.empty((m, *osize, ndim), dtype=dtype, device=out.device)
        inside = None
        for a in range(ndim):
            shape = [m] + [1] * ndim
            shape[1 + a] = osize[a]
            grid[..., ndim - 1 - a] = norm[a][i : i + m].reshape(shape)  # grid_sample's last entry is the first axis
            if fill:
                x = coords[a][i : i + m]
                wa = torch.minimum(x + 1.0, spatial[a] - x).clamp(0.0, 1.0).reshape(shape)
                inside = wa if inside is None else inside * wa
        # one call for the chunk: the window broadcast over its centres (a stride-0 batch, no copy)
        res = F.grid_sample(win.expand(m, *win.shape), grid, "bilinear", "zeros", align_corners=False)
        dst = out[i : i + m]
        dst.copy_(res)  # out[:, d] is strided: grid_sample has no out=
        if inside is not None:
            dst.add_((value * (1.0 - inside)).to(dtype)[:, None])


def _gather_nearest(
    level_img: torch.Tensor, coords: Sequence[torch.Tensor], padding_mode: str, value: float, out: torch.Tensor
) -> None:
    """Nearest samples into ``out [N, C, *o]``: the pixel ``floor(x + 0.5)`` (round half up), a gather, so labels of
    any dtype stay exact (``grid_sample`` rounds half to even and takes only floating-point images)."""
    c, *spatial = level_img.shape
    ndim = len(spatial)
    n = coords[0].shape[0]
    osize = [x.shape[1] for x in coords]
    lin, inside, stride = None, None, 1
    for a in reversed(range(ndim)):
        idx, ins = map_padded_index(torch.floor(coords[a] + 0.5).to(torch.int64), spatial[a], padding_mode)
        shape = [n] + [1] * ndim
        shape[1 + a] = osize[a]
        lin = (idx * stride).reshape(shape) + (0 if lin is None else lin)
        if ins is not None:
            inside = ins.reshape(shape) if inside is None else inside & ins.reshape(shape)
        stride *= spatial[a]
    assert lin is not None
    vals = level_img.reshape(c, -1)[:, lin.expand(n, *osize)].to(out.dtype)
    if inside is not None:
        fill = torch.as_tensor(value if padding_mode == "constant" else 0, dtype=out.dtype, device=out.device)
        vals = torch.where(inside, vals, fill)
    out.copy_(vals.transpose(0, 1))


def _resample(
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
    """One scale ``[N, C, *o]`` of every centre, any step, any padding (``bilinear``: ``F.grid_sample``)."""
    coords = patch_sample_coords(centers, patch_size, osize, level)
    if mode == "nearest":
        level_img = level_img.contiguous()  # flattened by every chunk's gather
        chunk = max(1, _GRID_CHUNK_SAMPLES // int(np.prod(osize)))
        for i in range(0, centers.shape[0], chunk):
            _gather_nearest(level_img, [x[i : i + chunk] for x in coords], padding_mode, value, out[i : i + chunk])
    else:
        _grid_sample(level_img, coords, padding_mode, value, out)


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

    Vectorised over all N centres (no loop over patches), 2D and 3D, on the device of ``img``. Each scale is one
    batched ``F.grid_sample`` on its mip-map level, except scales whose sampling step is a whole number of pixels
    on their level (e.g. power-of-two fields of view): those are read as strided crops of the (padded) level
    (``strided.py``, measured faster). Both give the same values; whole-pixel positions bit for bit.

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
    levels = [min(lvl, len(pyramid) - 1) for lvl in levels]
    from .strided import sample_whole_steps  # the special path, built on this module's helpers

    # whole-number steps: strided crops of the level; then F.grid_sample for the rest
    left = sample_whole_steps(pyramid, levels, ctr, sizes, osize, mode, padding_mode, float(value), out)
    for d, ps in enumerate(sizes):
        todo = left.get(d)
        if todo is None or todo.numel() == n:
            _resample(pyramid[levels[d]], ctr, ps, osize, levels[d], mode, padding_mode, float(value), out[:, d])
        elif todo.numel() > 0:
            part = torch.empty((todo.numel(), *out.shape[2:]), dtype=out_dtype, device=device)
            _resample(pyramid[levels[d]], ctr[todo], ps, osize, levels[d], mode, padding_mode, float(value), part)
            out[:, d].index_copy_(0, todo, part)
    return out
