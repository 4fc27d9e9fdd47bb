"""Data-parallel scaling of the segment-then-segment training on CPU: the bundle's ``train.json`` with 1 process, then
``train.json`` + ``multi_gpu_train.json`` under ``torchrun`` with 2 processes (gloo), the same samples per epoch.

Time per epoch is ignite's "Epoch[n] Complete. Time taken" of each ``SupervisedTrainer`` (the iterations of the
epoch: loading, augmenting, forward, backward, the DDP all-reduce, the optimiser step; validation, which every rank
runs on the whole validation image, is not in it), mean over epochs 2.. of each stage. The 1-minute load average is
printed before and after each run: on a shared machine the numbers mean little when it exceeds the number of cores.

Run (CPU, about 1.5 minutes):
    OMP_NUM_THREADS=1 python benchmarks/sts_ddp_scaling.py --epochs 4
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "segment_then_segment" / "configs"
EPOCH = re.compile(r"SupervisedTrainer - INFO - Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")


def epoch_times(log: str, world: int) -> dict[str, float]:
    """Mean seconds per epoch (epochs 2..) of the coarse and the fine stage from a run's log (rank lines averaged)."""
    stages: list[list[float]] = [[]]
    last = 0
    for match in EPOCH.finditer(log):
        epoch = int(match.group(1))
        if epoch < last:  # epoch numbering restarted: the fine stage
            stages.append([])
        last = epoch
        h, m, s = int(match.group(2)), int(match.group(3)), float(match.group(4))
        if epoch > 1:
            stages[-1].append(3600 * h + 60 * m + s)
    return {name: sum(t) / len(t) for name, t in zip(("coarse", "fine"), stages) if t}


def run(world: int, epochs: int, samples: int, folder: Path) -> tuple[dict[str, float], float, tuple[float, float]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    args = ["--model_dir", str(folder / "models"), "--coarse_epochs", str(epochs), "--fine_epochs", str(epochs),
            "--samples_per_epoch", str(samples)]
    if world == 1:
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "train.json"), *args]
    else:
        configs = repr([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={world}",
               "-m", "monai.bundle", "run", "--config_file", configs, *args]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-4000:])
    return epoch_times(proc.stdout + proc.stderr, world), wall, (load_before, os.getloadavg()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples-per-epoch", type=int, default=64)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {args.samples_per_epoch} samples per epoch, batch 8 per process")
    print("| processes | coarse s/epoch | fine s/epoch | speed-up (coarse, fine) | whole run s | load avg before → after |")
    print("|---|---|---|---|---|---|")
    base = None
    for world in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            times, wall, load = run(world, args.epochs, args.samples_per_epoch, Path(tmp))
        base = base or times
        print(f"| {world} | {times['coarse']:.2f} | {times['fine']:.2f} | {base['coarse'] / times['coarse']:.2f}×, "
              f"{base['fine'] / times['fine']:.2f}× | {wall:.0f} | {load[0]:.1f} → {load[1]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
