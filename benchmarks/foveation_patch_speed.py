"""Patches per second of ``MultiScalePatches`` vs per-patch loops, and vs the cost of writing the output once.

Compared side by side in one run, on CPU with one thread, on the same image and centres:

* ours: ``MultiScalePatches`` (vectorised; ``antialias=False`` for the equality check, ``True`` also timed);
* (a) a straightforward per-patch loop: for each centre and scale, crop the in-image part, zero-pad it to the
  field of view, ``F.interpolate`` (bilinear) to the output size;
* (b) the same composed from MONAI transforms per patch: ``SpatialCrop`` → ``BorderPad`` → ``Resize``;
* write limit: allocating and filling the ``[N, D, C, *output]`` output tensor once (a memory-bound floor).

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
    ]
    print(f"\n{'method':52s} {'wall s':>8s} {'CPU s':>8s} {'patches/CPU s':>14s}")
    for name, w, t in rows:
        print(f"{name:52s} {w:8.4f} {t:8.4f} {n_patches / t:14.0f}")
    print("\nratios of CPU time:")
    print(f"\nspeed-up of ours (antialias=False) vs (a): {t_naive / t_ours:.1f}x, vs (b): {t_monai / t_ours:.1f}x")
    print(f"speed-up of ours (antialias=True) vs (a'): {t_naive_aa / t_ours_aa:.1f}x, "
          f"vs (b): {t_monai / t_ours_aa:.1f}x")
    print(f"ours / write floor: {t_ours / t_write:.2f}x (antialias=False), {t_ours_aa / t_write:.2f}x (antialias=True)")


if __name__ == "__main__":
    main()
