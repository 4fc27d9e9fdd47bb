"""Patches per second of ``MultiScalePatches`` vs per-patch loops, and vs the cost of writing the output once.

Compared side by side in one run, on CPU with one thread, on the same image and centres:

* ours: ``MultiScalePatches`` (vectorised; ``antialias=False`` for the equality check, ``True`` also timed);
* (a) a straightforward per-patch loop: for each centre and scale, crop the in-image part, zero-pad it to the
  field of view, ``F.interpolate`` (bilinear) to the output size;
* (b) the same composed from MONAI transforms per patch: ``SpatialCrop`` → ``BorderPad`` → ``Resize``;
* write limit: allocating and filling the ``[N, D, C, *output]`` output tensor once (a memory-bound floor);
* (c) the plain-library baseline for the resampler: one batched ``F.grid_sample`` per scale over all centres, on the
  mip-map level of that scale (``build_pyramid``/``pyramid_level``, the same levels ours reads), coordinates from
  ``patch_sample_coords``; compared with ours (``antialias=True``) for equality, as a whole and per scale against
  each of our two paths: the whole-number-step fast path (``strided.py``, strided views) and the general path,
  which is itself ``F.grid_sample`` (padding folded into the positions, a power-of-two window of the level; forced
  by raising ``strided._FAST_PATH_MIN_ELEMENTS``), so its ratio is our wrapper's overhead. The pyramid is built
  once outside the timings for these per-scale rows.

(a) and (b) are checked equal to ours (``antialias=False``: bilinear from the full-resolution image) before
timing is reported. Fields of view and output size are chosen with the same parity, so every crop is pixel-aligned
and the three sample exactly the same positions.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/foveation_patch_speed.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import BorderPad, Resize, SpatialCrop

from monai_fovea.transforms import MultiScalePatches


def _box(center: int, s: int, o: int) -> int:
    """First pixel of the field of view ``s`` concentric with the ``o`` crop at ``center`` (same parity)."""
    return center - o // 2 + (o - s) // 2


def naive_loop(img: torch.Tensor, centers: np.ndarray, sizes: list[int], o: int) -> torch.Tensor:
    c, h, w = img.shape
    out = torch.empty(len(centers), len(sizes), c, o, o)
    for n, (cy, cx) in enumerate(centers):
        for d, s in enumerate(sizes):
            y0, x0 = _box(cy, s, o), _box(cx, s, o)
            crop = img[:, max(y0, 0) : min(y0 + s, h), max(x0, 0) : min(x0 + s, w)]
            pad = (max(-x0, 0), max(x0 + s - w, 0), max(-y0, 0), max(y0 + s - h, 0))
            crop = F.pad(crop, pad)
            out[n, d] = F.interpolate(crop[None], size=(o, o), mode="bilinear", align_corners=False)[0]
    return out


def naive_loop_antialias(img: torch.Tensor, centers: np.ndarray, sizes: list[int], o: int) -> torch.Tensor:
    c, h, w = img.shape
    out = torch.empty(len(centers), len(sizes), c, o, o)
    for n, (cy, cx) in enumerate(centers):
        for d, s in enumerate(sizes):
            y0, x0 = _box(cy, s, o), _box(cx, s, o)
            crop = img[:, max(y0, 0) : min(y0 + s, h), max(x0, 0) : min(x0 + s, w)]
            crop = F.pad(crop, (max(-x0, 0), max(x0 + s - w, 0), max(-y0, 0), max(y0 + s - h, 0)))
            out[n, d] = F.interpolate(crop[None], size=(o, o), mode="bilinear", align_corners=False, antialias=True)[0]
    return out


def monai_loop(img: torch.Tensor, centers: np.ndarray, sizes: list[int], o: int) -> torch.Tensor:
    c, h, w = img.shape
    out = torch.empty(len(centers), len(sizes), c, o, o)
    resize = Resize((o, o), mode="bilinear", align_corners=False, anti_aliasing=False)
    for n, (cy, cx) in enumerate(centers):
        for d, s in enumerate(sizes):
            y0, x0 = _box(cy, s, o), _box(cx, s, o)
            start = (max(y0, 0), max(x0, 0))
            end = (min(y0 + s, h), min(x0 + s, w))
            crop = SpatialCrop(roi_start=start, roi_end=end)(img)
            border = [max(-y0, 0), max(y0 + s - h, 0), max(-x0, 0), max(x0 + s - w, 0)]
            crop = BorderPad(spatial_border=border, mode="constant")(crop)
            out[n, d] = torch.as_tensor(resize(crop))
    return out


def grid_sample_scale(level: torch.Tensor, ctr: torch.Tensor, s: int, o: int, lvl: int) -> torch.Tensor:
    """``[N, C, o, o]``: one scale of every centre by one ``F.grid_sample`` call on its mip-map level."""
    from monai_fovea.transforms.foveation.functional import patch_sample_coords

    c, h, w = level.shape
    ys, xs = patch_sample_coords(ctr, (s, s), (o, o), lvl)  # level-pixel coordinates, pixel i centred at i
    gy, gx = (2 * ys + 1) / h - 1, (2 * xs + 1) / w - 1  # align_corners=False normalisation
    n = len(ctr)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1).to(level.dtype)  # [N, o, o, 2]
    out = F.grid_sample(
        level[None], grid.reshape(1, n * o, o, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.view(c, n, o, o).transpose(0, 1)


def grid_sample_mipmap(img: torch.Tensor, ctr: torch.Tensor, sizes: list[int], o: int, pyramid=None) -> torch.Tensor:
    from monai_fovea.transforms.foveation.functional import build_pyramid, pyramid_level

    levels = [pyramid_level(s / o) for s in sizes]
    pyramid = pyramid if pyramid is not None else build_pyramid(img, max(levels) + 1)
    return torch.stack([grid_sample_scale(pyramid[lv], ctr, s, o, lv) for s, lv in zip(sizes, levels)], 1)


def _time(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall and CPU (this process) seconds over ``repeats`` runs, and the last result.

    The ratios use CPU time: the development machines are shared, so wall time includes other jobs' load.
    """
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    return float(np.median(walls)), float(np.median(cpus)), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="image side (3-channel float32)")
    ap.add_argument("--centers", type=int, default=256)
    ap.add_argument("--patch-sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--output-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7, help="median of this many runs for the fast methods")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    img = torch.as_tensor(rng.random((3, args.size, args.size), dtype=np.float32))
    # some patches leave the image: padding is exercised
    centers = rng.integers(0, args.size, (args.centers, 2)).tolist()
    sizes, o = args.patch_sizes, args.output_size
    n_patches = len(centers) * len(sizes)
    shape = (len(centers), len(sizes), 3, o, o)
    print(f"image 3x{args.size}x{args.size} float32, {len(centers)} centres x {len(sizes)} scales {sizes} -> {o}x{o} "
          f"= {n_patches} patches ({np.prod(shape) * 4 / 2**20:.1f} MiB output), 1 thread")

    ours = MultiScalePatches(sizes, o, antialias=False)
    ours_aa = MultiScalePatches(sizes, o, antialias=True)
    ctr = torch.as_tensor(centers)
    w_write, t_write, _ = _time(lambda: torch.empty(shape).fill_(1.0), args.repeats)
    w_ours, t_ours, out_ours = _time(lambda: ours(img, ctr), args.repeats)
    w_ours_aa, t_ours_aa, _ = _time(lambda: ours_aa(img, ctr), args.repeats)
    w_naive, t_naive, out_naive = _time(lambda: naive_loop(img, centers, sizes, o), 1)
    w_monai, t_monai, out_monai = _time(lambda: monai_loop(img, centers, sizes, o), 1)
    w_naive_aa, t_naive_aa, _ = _time(lambda: naive_loop_antialias(img, centers, sizes, o), 1)
    w_grid, t_grid, out_grid = _time(lambda: grid_sample_mipmap(img, ctr, sizes, o), args.repeats)
    out_ours_aa = ours_aa(img, ctr)
    err_c = float((out_ours_aa - out_grid).abs().max())
    print(f"max |ours (antialias=True) - (c) grid_sample on the mip-map| = {err_c:.2e}; unit scale bit-identical: "
          f"{torch.equal(out_ours_aa[:, 0], out_grid[:, 0])}")
    err_a = float((out_ours - out_naive).abs().max())
    err_b = float((out_ours - out_monai).abs().max())
    exact_unit = torch.equal(out_ours[:, 0], out_naive[:, 0]) and torch.equal(out_ours[:, 0], out_monai[:, 0])
    print(f"max |ours - (a)| = {err_a:.2e}, max |ours - (b)| = {err_b:.2e}; unit scale bit-identical: {exact_unit}")
    if max(err_a, err_b) > 1e-4:
        raise SystemExit("outputs differ: the comparison would be meaningless")

    rows = [
        ("write output once (floor)", w_write, t_write),
        ("ours, MultiScalePatches antialias=False", w_ours, t_ours),
        ("ours, MultiScalePatches antialias=True (mip-map)", w_ours_aa, t_ours_aa),
        ("(a) per-patch loop: crop+pad+interpolate", w_naive, t_naive),
        ("(b) per-patch MONAI SpatialCrop+BorderPad+Resize", w_monai, t_monai),
        ("(a') per-patch loop with interpolate(antialias=True)", w_naive_aa, t_naive_aa),
        ("(c) batched grid_sample on the mip-map level", w_grid, t_grid),
    ]
    print(f"\n{'method':52s} {'wall s':>8s} {'CPU s':>8s} {'patches/CPU s':>14s}")
    for name, w, t in rows:
        print(f"{name:52s} {w:8.4f} {t:8.4f} {n_patches / t:14.0f}")
    print("\nratios of CPU time:")
    print(f"\nspeed-up of ours (antialias=False) vs (a): {t_naive / t_ours:.1f}x, vs (b): {t_monai / t_ours:.1f}x")
    print(f"speed-up of ours (antialias=True) vs (a'): {t_naive_aa / t_ours_aa:.1f}x, "
          f"vs (b): {t_monai / t_ours_aa:.1f}x")
    print(f"ours / write floor: {t_ours / t_write:.2f}x (antialias=False), {t_ours_aa / t_write:.2f}x (antialias=True)")
    print(f"speed-up of ours (antialias=True) vs (c) grid_sample on the mip-map: {t_grid / t_ours_aa:.2f}x")
    per_scale(img, ctr, sizes, o, args.repeats)


def per_scale(img: torch.Tensor, ctr: torch.Tensor, sizes: list[int], o: int, repeats: int) -> None:
    """Per scale, pyramid prebuilt: our fast path (when the scale takes it), our general path, grid_sample."""
    import monai_fovea.transforms.foveation.functional as fn
    import monai_fovea.transforms.foveation.strided as strided

    levels = [fn.pyramid_level(s / o) for s in sizes]
    pyramid = fn.build_pyramid(img, max(levels) + 1)
    print(f"\nper scale (pyramid prebuilt), CPU s, median of {repeats}; ratio = grid_sample / ours (>1: ours faster)")
    print(f"{'FoV':>6s} {'level':>5s} {'ours default':>13s} {'path':>8s} {'ours general':>13s} {'grid_sample':>12s} "
          f"{'default':>8s} {'general':>8s} {'max diff':>9s}")
    default_min = strided._FAST_PATH_MIN_ELEMENTS
    for s, lv in zip(sizes, levels):
        fast = strided._integer_steps((s, s), (o, o), lv) is not None and len(ctr) * img.shape[0] * o * o >= default_min
        _, t_def, a = _time(lambda: fn.multiscale_patches(img, ctr, [s], o, pyramid=pyramid), repeats)
        strided._FAST_PATH_MIN_ELEMENTS = 1 << 62
        try:
            _, t_gen, b = _time(lambda: fn.multiscale_patches(img, ctr, [s], o, pyramid=pyramid), repeats)
        finally:
            strided._FAST_PATH_MIN_ELEMENTS = default_min
        _, t_gs, g = _time(lambda: grid_sample_scale(pyramid[lv], ctr, s, o, lv), repeats)
        diff = max(float((a[:, 0] - g).abs().max()), float((b[:, 0] - g).abs().max()))
        print(f"{s:6d} {lv:5d} {t_def:13.4f} {'fast' if fast else 'general':>8s} {t_gen:13.4f} {t_gs:12.4f} "
              f"{t_gs / t_def:7.2f}x {t_gs / t_gen:7.2f}x {diff:9.1e}")


if __name__ == "__main__":
    main()
