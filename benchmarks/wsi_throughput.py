"""Slide-scale throughput: ``WSIFoveatedInferer`` against MONAI's own WSI path, side by side in one run.

Peer (what a MONAI user would pick): ``PatchInferer(WSISlidingWindowSplitter(64, reader=OpenSlide), AvgMerger)``
— MONAI's fastest CPU backend (its tifffile reader decodes the whole level for every patch, ~25× slower; cuCIM
needs a GPU). Both run the same ``BasicUNet(features=(8, 8, 16, 32, 64, 8))`` backbone with the same weights (the
bundle's) on the same 64-px locations (non-overlapping tiles of the slide, tissue mask off), the same batch size and
input normalisation (``x / 255``). Ours:

* ``fixed``: one FoV (64 px), like MONAI's;
* ``soft3``: the bundle's network, soft mix of FoVs 64, 128, 256 px;
* ``soft5``: soft mix of FoVs 64 … 1024 px (head untrained, seeded; throughput only);
* ``<method>-serial``: the same with ``read_workers=0`` (reads not overlapped with the network), to show what the
  reader thread buys.

MONAI's path ends with the merged class map in memory (its argmax taken, nothing written); ours ends with the label
TIFF, the overlay and the APSM PNGs on disk — the comparison charges ours for its writing.

Part 1 — the ``cmu_slide`` sample (2220 × 2967 px): all four in ONE process, interleaved, ``--repeats`` rounds;
medians and the per-round ratio to MONAI's time (median). Where the time goes: ours from
``WSIFoveatedInferer.last_stats["seconds"]`` (reading runs in a thread, overlapped with the network: ``read`` is
thread time, ``read_wait`` what the network loop waited for it); MONAI's from timers around its reader's
``get_data``, the network and the merger.

Part 2 — large slides made from the sample (the sample tiled to ``--large-sizes`` px squared, each level of a
JPEG pyramid down to < 256 px written once from the tiled levels of the sample and cached in
``$MONAI_FOVEA_DATA/bench``): each method in a fresh process (so its peak RSS, ``VmHWM``, is its own), methods
interleaved per size; seconds per gigapixel, locations/s, peak RSS, and the breakdown.

Run: ``OMP_NUM_THREADS=1 python benchmarks/wsi_throughput.py`` (``--skip-large`` for part 1 only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "bundles" / "foveation_wsi_segmentation" / "models" / "model.pt"
FOVS = {"fixed": (64, 128, 256), "soft3": (64, 128, 256), "soft5": (64, 128, 256, 512, 1024)}


# --- the methods ------------------------------------------------------------------------------------------------
def build(method: str):
    """The network of a method: a ``FoveatedSegmenter`` (ours) or the bare backbone (MONAI), bundle weights."""
    import torch

    from monai_fovea.apps.foveation_wsi import build_network

    torch.manual_seed(0)
    method = method.removesuffix("-serial")  # the same network, read in the calling thread (read_workers=0)
    net = build_network(patch_sizes=FOVS.get(method, FOVS["soft3"]))
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True) if WEIGHTS.is_file() else {}
    if method == "soft5":  # only the backbone fits a 5-FoV head
        state = {k: v for k, v in state.items() if k.startswith("backbone.")}
    net.load_state_dict(state, strict=method != "soft5")
    if method == "fixed":
        net.fixed_index, net.mode = 0, "fixed"
    return net.eval()


def run_ours(path: str, net, batch: int, workers: int | None) -> dict:
    from monai_fovea.inferers import WSIFoveatedInferer

    with tempfile.TemporaryDirectory(prefix="wsi_tp_") as out:
        inferer = WSIFoveatedInferer(
            sw_batch_size=batch, backend="openslide", use_tissue_mask=False, progress=False, read_workers=workers
        )
        t0 = time.perf_counter()
        inferer(path, net, out)
        total = time.perf_counter() - t0
    return {"seconds": total, "locations": inferer.last_stats["predicted"], "breakdown": inferer.last_stats["seconds"]}


def run_monai(path: str, net, batch: int) -> dict:
    import torch
    from monai.data import WSIReader
    from monai.inferers import AvgMerger, PatchInferer, WSISlidingWindowSplitter

    timers = {"read": 0.0, "network": 0.0, "merge": 0.0}

    def timed(fn, key):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timers[key] += time.perf_counter() - t0

        return wrapper

    class TimedAvgMerger(AvgMerger):
        aggregate = timed(AvgMerger.aggregate, "merge")
        finalize = timed(AvgMerger.finalize, "merge")

    reader = WSIReader(backend="openslide")
    reader.get_data = timed(reader.get_data, "read")
    backbone = net.backbone

    network = timed(lambda x: backbone(x.float() / 255.0), "network")
    inferer = PatchInferer(
        splitter=WSISlidingWindowSplitter(patch_size=64, reader=reader), merger_cls=TimedAvgMerger, batch_size=batch
    )
    count = {"n": 0}

    def counting(x):
        count["n"] += len(x)
        return network(x)

    t0 = time.perf_counter()
    with torch.no_grad():
        prob = inferer(path, counting)
        labels = prob.argmax(1).to(torch.uint8)
    total = time.perf_counter() - t0
    del prob, labels
    timers["other"] = total - sum(timers.values())
    return {"seconds": total, "locations": count["n"], "breakdown": timers}


def run(method: str, path: str, net, batch: int, workers: int | None) -> dict:
    """One end-to-end run; ``cpu_seconds`` is this process's CPU time (all its threads), less sensitive than wall
    time to other jobs on a shared machine."""
    c0 = time.process_time()
    if method == "monai":
        res = run_monai(path, net, batch)
    else:
        res = run_ours(path, net, batch, 0 if method.endswith("-serial") else workers)
    return {**res, "cpu_seconds": time.process_time() - c0}


# --- the large slide --------------------------------------------------------------------------------------------
def make_large_slide(sample: Path, size: int, cache: Path) -> Path:
    """The sample tiled to ``size`` × ``size`` px as a tiled JPEG pyramid (256-px tiles, levels halved down to one
    tile), written once and cached. Level ``k`` is the sample's own ``2**k`` reduction tiled (so the file is
    written from a sample-sized image, in memory independent of ``size``)."""
    import tifffile
    from PIL import Image

    target = cache / f"cmu_tiled_{size}.tif"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffFile(sample) as tif:
        base = tif.pages[0].asarray()
        mpp = 1e4 / (tif.pages[0].tags["XResolution"].value[0] / tif.pages[0].tags["XResolution"].value[1])
    tile, levels, shapes = 256, 1, [(size, size)]
    while max(shapes[-1]) > tile:
        shapes.append((-(-shapes[-1][0] // 2), -(-shapes[-1][1] // 2)))
        levels += 1

    def tiles(k: int, lh: int, lw: int):
        bh, bw = base.shape[0] >> k, base.shape[1] >> k  # the sample reduced 2**k (even tiling period)
        small = np.asarray(Image.fromarray(base).resize((bw, bh), Image.BOX)) if k else base
        for r in range(0, lh, tile):
            rows = (np.arange(r, r + tile) % bh)
            band = small[rows]
            for c in range(0, lw, tile):
                yield np.ascontiguousarray(band[:, np.arange(c, c + tile) % bw])

    tmp = target.with_suffix(".tmp.tif")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for k, (lh, lw) in enumerate(shapes):
            tw.write(
                tiles(k, lh, lw), shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                compression="jpeg", compressionargs={"level": 90}, subfiletype=1 if k else 0,
                resolution=(1e4 / mpp * lw / size, 1e4 / mpp * lh / size), resolutionunit="CENTIMETER", metadata=None,
            )
    os.replace(tmp, target)
    return target


CHILD = r"""
import json, sys, time
import torch
sys.path.insert(0, sys.argv[5])
torch.set_num_threads(int(sys.argv[4]))
import wsi_throughput as b
def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(key + ":")) / 1024
method, path, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
net = b.build(method)
import monai.inferers, monai_fovea.inferers, openslide  # imports before the baseline
base = status_mb("VmRSS")
res = b.run(method, path, net, batch, None if sys.argv[6] == "auto" else int(sys.argv[6]))
print(json.dumps({**res, "baseline_rss_mb": base, "peak_rss_mb": status_mb("VmHWM")}))
"""


def run_child(method: str, path: Path, batch: int, threads: int, workers: int | None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(path), str(batch), str(threads), str(Path(__file__).parent), "auto" if workers is None else str(workers)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- report -----------------------------------------------------------------------------------------------------
def fmt_breakdown(b: dict) -> str:
    keys = [k for k in b if k != "total"]
    return ", ".join(f"{k} {b[k]:.2f}" for k in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["monai", "fixed", "soft3", "soft5", "soft3-serial"])
    parser.add_argument("--batch", type=int, default=64, help="locations per network call (both paths)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the reader thread comes on top)")
    parser.add_argument("--workers", type=int, default=None,
                        help="our read_workers (default: the inferer's choice, 1 reader thread unless torch uses every core)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-sizes", type=int, nargs="*", default=[8192, 16384])
    parser.add_argument("--large-methods", nargs="+", default=["monai", "fixed", "soft3"])
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()

    import torch

    from monai_fovea.data import samples

    torch.set_num_threads(args.threads)
    sample = Path(samples.fetch("cmu_slide")["image"])
    print(f"# WSI throughput, {time.strftime('%Y-%m-%d')}, torch threads {args.threads}, read_workers {'auto' if args.workers is None else args.workers}, "
          f"batch {args.batch}, {os.cpu_count()} CPUs (shared with other jobs: timings noisy, ratios per round)")
    nets = {m: build(m) for m in args.methods}
    for m in args.methods:  # warm-up (first-call allocations, file cache)
        run(m, str(sample), nets[m], args.batch, args.workers)
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for _ in range(args.repeats):
        for m in args.methods:
            results[m].append(run(m, str(sample), nets[m], args.batch, args.workers))
    ref = "monai" if "monai" in args.methods else args.methods[0]
    print(f"\n## sample slide {sample.name} (2220 x 2967 px), tissue mask off, {args.repeats} interleaved rounds")
    print("\n| method | locations | median wall s | min wall s | wall ratio to MONAI: median (per round) | median CPU s | "
          "CPU ratio to MONAI: median (per round) | breakdown of the median round (wall s) |")
    print("|---|---|---|---|---|---|---|---|")
    for m in args.methods:
        secs = [r["seconds"] for r in results[m]]
        cpus = [r["cpu_seconds"] for r in results[m]]
        ratios = [r["seconds"] / q["seconds"] for r, q in zip(results[m], results[ref])]
        cratios = [r["cpu_seconds"] / q["cpu_seconds"] for r, q in zip(results[m], results[ref])]
        med = sorted(results[m], key=lambda r: r["seconds"])[len(secs) // 2]
        print(f"| {m} | {med['locations']} | {statistics.median(secs):.2f} | {min(secs):.2f} | "
              f"{statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)}) | {statistics.median(cpus):.2f} | "
              f"{statistics.median(cratios):.2f}x ({', '.join(f'{x:.2f}' for x in cratios)}) | {fmt_breakdown(med['breakdown'])} |")
    sys.stdout.flush()
    if args.skip_large:
        return
    cache = Path(os.environ.get("MONAI_FOVEA_DATA", Path.home() / ".cache" / "monai_fovea")) / "bench"
    rows = []
    for size in args.large_sizes:
        t0 = time.perf_counter()
        path = make_large_slide(sample, size, cache)
        made = time.perf_counter() - t0
        print(f"\nlarge slide {size} x {size} px: {path} ({path.stat().st_size / 1e6:.0f} MB, ready in {made:.0f} s)", flush=True)
        for m in args.large_methods:
            r = run_child(m, path, args.batch, args.threads, args.workers)
            r.update(method=m, size=size)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print("\n## large slides (fresh process per run)")
    print("\n| slide px | method | locations | wall s | wall s / gigapixel | locations / wall s | wall ratio to MONAI | CPU s | "
          "CPU ratio to MONAI | peak RSS MB | above baseline MB | breakdown (wall s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        monai = next((q for q in rows if q["size"] == r["size"] and q["method"] == "monai"), None)
        ratio = f"{r['seconds'] / monai['seconds']:.2f}x" if monai else "-"
        cratio = f"{r['cpu_seconds'] / monai['cpu_seconds']:.2f}x" if monai and "cpu_seconds" in monai else "-"
        gpx = r["size"] ** 2 / 1e9
        print(f"| {r['size']}² | {r['method']} | {r['locations']} | {r['seconds']:.1f} | {r['seconds'] / gpx:.0f} | "
              f"{r['locations'] / r['seconds']:.0f} | {ratio} | {r.get('cpu_seconds', float('nan')):.1f} | {cratio} | "
              f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} | {fmt_breakdown(r['breakdown'])} |")
    if len(args.large_sizes) >= 2:
        a, b = args.large_sizes[0], args.large_sizes[-1]
        for m in args.large_methods:
            ra = next(r for r in rows if r["size"] == a and r["method"] == m)
            rb = next(r for r in rows if r["size"] == b and r["method"] == m)
            print(f"{m}: peak RSS {b}² / {a}² ({(b / a) ** 2:.0f}x the pixels) = {rb['peak_rss_mb'] / ra['peak_rss_mb']:.2f}; "
                  f"above baseline {(rb['peak_rss_mb'] - rb['baseline_rss_mb']) / max(1e-9, ra['peak_rss_mb'] - ra['baseline_rss_mb']):.2f}")


if __name__ == "__main__":
    main()
