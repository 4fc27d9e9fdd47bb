"""The resampler's one special path: whole-number sampling steps read as strided views of the (padded) level.

Why it exists (``docs/BENCHMARKS.md``, "Baseline: batched ``F.grid_sample`` on the mip-map level"): for a scale whose
sampling step is a whole number of pixels of its mip-map level (every power-of-two field of view with the mip-map;
steps 1, 2, 4, ... without it), every sample of a patch has the same sub-pixel fraction, so the patches are strided
crops of the level: one ``index_select`` of rows of an ``as_strided`` view per (multi)linear corner, a memory-bound
copy. On CPU with one thread that is 1.5-4.7x faster than one batched ``F.grid_sample`` per scale on the same level
(FoV 64/128/256/512 -> 64, 256 centres: 4.76x, 2.54x, 2.06x, 1.66x in the run after the general path was replaced;
FoV 512 measured 1.44-1.68x over three runs, borderline), which passes the project rule "keep a special path only
where it is >= 1.5x faster than the library call". Everything else — other steps, ``nearest`` at any step,
and the patches this path leaves — goes through ``F.grid_sample`` in
:func:`monai_fovea.transforms.foveation.functional.multiscale_patches`; both give the same values (whole-pixel
positions bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from .functional import map_padded_index, patch_sample_coords

__all__ = ["sample_whole_steps"]

# working-set size per chunk of centres (about an L2 cache): larger chunks spill intermediates to memory
_CHUNK_BYTES = 1 << 21
# a scale takes this path only when it has at least this many output elements: below it the fixed per-call overhead
# outweighs the gain (measured on CPU). Tests set it to 0 (always) or a huge number (never) to compare the paths.
_FAST_PATH_MIN_ELEMENTS = 1 << 18
# a level is copied (padded or converted) only when the copy has at most this many elements per output element it
# serves: ``F.grid_sample`` costs several fast-path reads per output element
_PREP_COPY_FACTOR = 4


def sample_whole_steps(
    pyramid: Sequence[torch.Tensor],
    levels: Sequence[int],
    centers: torch.Tensor,
    sizes: Sequence[Sequence[int]],
    osize: Sequence[int],
    mode: str,
    padding_mode: str,
    value: float,
    out: torch.Tensor,
) -> dict[int, torch.Tensor]:
    """Write the scales of ``out [N, D, C, *o]`` whose sampling step is a whole number of level pixels.

    Args:
        pyramid: the mip-map; scale ``d`` reads ``pyramid[levels[d]]``.
        centers: ``[N, ndim]`` float64 centres; ``sizes``: the D fields of view; ``osize``: the output size.
        mode, padding_mode, value: as in ``multiscale_patches``.

    Returns:
        For each scale taken, the int64 indices of its patches left unwritten (those reaching outside the level as
        prepared); scales not in the dict were not written at all.
    """
    n = centers.shape[0]
    if n * out.shape[2] * int(np.prod(osize)) < _FAST_PATH_MIN_ELEMENTS:
        return {}
    plans: dict[int, _IntegerStepPlan] = {}
    for d, ps in enumerate(sizes):
        steps = _integer_steps(ps, osize, levels[d])
        if steps is not None:
            first = torch.stack([x[:, 0] for x in patch_sample_coords(centers, ps, osize, levels[d])], dim=1)
            plans[d] = _plan_integer_step(first, steps, osize, mode)
    # each level is prepared once (padded, or used as it is) and shared by its scales
    left: dict[int, torch.Tensor] = {}
    for lvl in sorted({levels[d] for d in plans}):
        scales = [d for d in plans if levels[d] == lvl]
        prepared = _prepare_level(pyramid[lvl], [plans[d] for d in scales], osize, out.dtype, padding_mode, value)
        if prepared is None:
            continue
        lev, offset = prepared
        blended: dict[tuple[float, ...], torch.Tensor] = {}
        for d in scales:
            left[d] = _sample_integer_step(lev, plans[d]._replace(lo=plans[d].lo + offset), out[:, d], blended)
    return left


def _chunk_size(c: int, osize: Sequence[int], element_size: int) -> int:
    """Centres per chunk so that one chunk's intermediates (``[n, C, *(o + 1)]``) stay in cache."""
    per_patch = c * int(np.prod([o + 1 for o in osize])) * element_size
    return max(1, int(_CHUNK_BYTES // per_patch))



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
        # round half up, as ``multiscale_patches`` does: floor(x + j * k + 0.5) == floor(x + 0.5) + j * k
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
    values ``padding_mode`` gives outside the image (``map_padded_index``; ``zeros``/``constant``: 0/``value``)."""
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
    patches it serves (``F.grid_sample`` costs several reads per output pixel). Likewise a level that must be
    converted first (dtype, layout) is used only if the copy is small next to all the patches. The margin is
    capped by the largest patch extent, so a centre far outside the image cannot blow up memory (such patches
    are left to ``F.grid_sample``).
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
    others are left to ``F.grid_sample`` and returned (all of them, unwritten, when they are the majority).

    Args:
        level_img: contiguous ``[C, *S]`` in the dtype of ``out``; ``plan.lo`` is in its pixels.
        plan: from ``_plan_integer_step``.
        out: ``[N, C, *o]`` destination.
        blended: cache of ``level_img`` blended for one sub-pixel fraction (see ``_blend_level``), keyed by the
            fraction, shared by the scales that read this level.

    Returns:
        int64 indices of the patches left to ``F.grid_sample`` (not written).
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
        # mostly border patches: one grid_sample pass over all is cheaper than both paths and the merge
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
    # per-patch corner weights, in the output dtype
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


