"""Foveation on whole-slide images: pyramid-aware vs level-0-only multi-scale reads, and bounded inference memory.

Part 1 — reading. For random centres on the ``cmu_slide`` sample (3-level JPEG pyramid, 2220 × 2967 px), read D
concentric patches (FoVs ``--patch-sizes`` level-0 px, each resampled to ``--output`` px) with
:func:`monai_fovea.data.wsi.read_multiscale`, once choosing each scale's cheapest pyramid level
(``level_selection="auto"``) and once always reading level 0 (``"base"``, what a reader without pyramid awareness
does). Reported per output tile (one centre, all scales): pixels requested from the slide, pixels of the JPEG tiles
those requests touch (what the codec decodes), and wall time; every read is a separate region read
(``merge_reads=0``), as for scattered training locations.

Part 2 — memory. Peak RSS (fresh subprocess each) of :class:`WSIFoveatedInferer` (bundle network and settings) on
the sample slide and on the same slide tiled 2 × 2 (4× the pixels), with the resident size after imports and model
set-up as the baseline. The peak is the child's ``VmHWM`` (``/proc/self/status``); ``resource.getrusage``'s
``ru_maxrss`` is printed too, but Linux carries the *parent's* resident size at fork into the child's
``ru_maxrss`` across ``exec`` (here the benchmark process, ~1.7 GB after part 1), so it is not the child's own peak.

Run: ``OMP_NUM_THREADS=1 python benchmarks/foveation_wsi_reading.py``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _tile_counter(slide):
    """Wrap ``slide._read_inside`` to tally requested pixels and touched tile pixels per level."""
    import tifffile

    with tifffile.TiffFile(slide.path) as tif:
        tiles = [(p.tilelength or p.imagelength, p.tilewidth or p.imagewidth) for p in tif.pages[: slide.level_count]]
    stats = {"requested": 0, "decoded": 0}
    inner = slide._read_inside

    def counted(level, top, left, height, width):
        th, tw = tiles[level]
        stats["requested"] += height * width
        ny = (top + height - 1) // th - top // th + 1
        nx = (left + width - 1) // tw - left // tw + 1
        stats["decoded"] += ny * nx * th * tw
        return inner(level, top, left, height, width)

    slide._read_inside = counted
    return stats


def bench_reading(path: Path, patch_sizes: list[int], output: int, n: int, backends: list[str], seed: int) -> list[dict]:
    from monai_fovea.data.wsi import PyramidSlide, read_multiscale, select_level

    rng = np.random.default_rng(seed)
    rows = []
    for backend in backends:
        with PyramidSlide(path, backend) as slide:
            h, w = slide.shape
            centers = np.stack([rng.integers(0, h, n), rng.integers(0, w, n)], 1)
            levels = [select_level(slide.downsamples, (s, s), (output, output)) for s in patch_sizes]
            result = {"backend": backend, "levels_auto": levels}
            for mode in ("auto", "base"):
                stats = _tile_counter(slide)
                read_multiscale(slide, centers[:2], patch_sizes, output, level_selection=mode, merge_reads=0)  # warm-up
                stats.update(requested=0, decoded=0)
                t0 = time.perf_counter()
                for c in centers:  # one output tile (all scales of one centre) at a time
                    read_multiscale(slide, c[None], patch_sizes, output, level_selection=mode, merge_reads=0)
                dt = time.perf_counter() - t0
                slide._read_inside = type(slide)._read_inside.__get__(slide)
                result[mode] = {
                    "requested_px_per_tile": stats["requested"] / n,
                    "decoded_tile_px_per_tile": stats["decoded"] / n,
                    "ms_per_tile": 1e3 * dt / n,
                }
            a, b = result["auto"], result["base"]
            result["ratio_requested"] = b["requested_px_per_tile"] / a["requested_px_per_tile"]
            result["ratio_decoded"] = b["decoded_tile_px_per_tile"] / a["decoded_tile_px_per_tile"]
            result["speedup"] = b["ms_per_tile"] / a["ms_per_tile"]
            rows.append(result)
    return rows


CHILD = r"""
import json, os, resource, sys, time
import torch
torch.set_num_threads(1)
from monai_fovea.apps.foveation_wsi import build_network
from monai_fovea.inferers import WSIFoveatedInferer
slide, out, weights = sys.argv[1], sys.argv[2], sys.argv[3]
net = build_network()
if os.path.isfile(weights):
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
net.eval()
def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(key + ":")) / 1024
base = status_mb("VmRSS")
t0 = time.time()
inferer = WSIFoveatedInferer(sw_batch_size=32, backend="openslide", progress=False)
inferer(slide, net, out)
print(json.dumps({"peak_rss_mb": status_mb("VmHWM"), "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "baseline_rss_mb": base, "seconds": time.time() - t0, **inferer.last_stats}))
"""


def bench_memory(path: Path, weights: Path, workdir: Path) -> list[dict]:
    import tifffile

    from monai_fovea.data.io import write_pyramidal_tiff

    with tifffile.TiffFile(path) as tif:
        level0 = tif.pages[0].asarray()
    big = workdir / "cmu_tiled_2x2.tif"
    write_pyramidal_tiff(np.tile(level0, (2, 2, 1)), big, mpp=0.499, tile=256, levels=4)
    del level0
    rows = []
    for name, slide in (("sample", path), ("tiled 2x2 (4x pixels)", big)):
        proc = subprocess.run([sys.executable, "-c", CHILD, str(slide), str(workdir / name.split()[0]), str(weights)],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        with tifffile.TiffFile(slide) as tif:
            res["slide_px"] = tif.pages[0].imagelength * tif.pages[0].imagewidth
        rows.append({"slide": name, **res})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--output", type=int, default=256)
    parser.add_argument("--n", type=int, default=40, help="random centres per backend and mode")
    parser.add_argument("--backends", nargs="+", default=["tifffile", "openslide"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    from monai_fovea.data import samples

    path = Path(samples.fetch("cmu_slide")["image"])
    print(f"slide: {path.name}; FoVs {args.patch_sizes} -> {args.output} px; {args.n} random centres")
    print("\n| backend | mode | levels | requested px / tile | decoded tile px / tile | ms / tile |")
    print("|---|---|---|---|---|---|")
    for r in bench_reading(path, args.patch_sizes, args.output, args.n, args.backends, args.seed):
        for mode in ("auto", "base"):
            m = r[mode]
            lv = r["levels_auto"] if mode == "auto" else [0] * len(args.patch_sizes)
            print(f"| {r['backend']} | {mode} | {lv} | {m['requested_px_per_tile']:,.0f} | {m['decoded_tile_px_per_tile']:,.0f} | {m['ms_per_tile']:.1f} |")
        print(f"| {r['backend']} | base / auto | | {r['ratio_requested']:.1f}x | {r['ratio_decoded']:.1f}x | {r['speedup']:.1f}x |")
    if args.skip_memory:
        return
    weights = Path(__file__).resolve().parents[1] / "bundles" / "foveation_wsi_segmentation" / "models" / "model.pt"
    with tempfile.TemporaryDirectory(prefix="fov_wsi_bench_") as tmp:
        rows = bench_memory(path, weights, Path(tmp))
    print("\n| slide | pixels | locations (predicted) | baseline RSS MB | peak RSS (VmHWM) MB | peak - baseline MB | ru_maxrss MB | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['slide']} | {r['slide_px'] / 1e6:.1f} M | {r['locations']} ({r['predicted']}) | {r['baseline_rss_mb']:.0f} | "
              f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} | {r['ru_maxrss_mb']:.0f} | {r['seconds']:.1f} |")
    a, b = rows
    print(f"\npeak RSS ratio (4x pixels / 1x): {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}; "
          f"above-baseline ratio: {(b['peak_rss_mb'] - b['baseline_rss_mb']) / max(a['peak_rss_mb'] - a['baseline_rss_mb'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
