"""Occupancy super-resolution with the sparse generative net: x2 and chained x4, DSC vs the full-resolution mask.

The x2 model is trained here on synthetic skulls only (``train_superres``: crops 64^3, seeds 100-102); evaluation
on held-out skulls: the real ``ct_head`` skull (largest bone component, 256 x 256 x 108) and the synthetic skull
seed 999. Baseline: the coarse mask upsampled by nearest neighbour. x4: the mask max-pooled by 4, nearest-upsampled
x2, refined by the x2 model, nearest-upsampled x2 again, refined again.

    OMP_NUM_THREADS=1 python benchmarks/sparse_superres.py --steps 400
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

CHANNELS = (4, 8, 16, 16, 32)  # the network of the results in docs/BENCHMARKS.md


def dsc(a: np.ndarray, b: np.ndarray) -> float:
    from monai.metrics import compute_dice

    return float(compute_dice(torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float(),
                              include_background=True, ignore_empty=False)[0, 0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--model", default="/tmp/sparse_superres_x2.pt")
    args = p.parse_args()
    from monai_fovea.apps import sparse_completion as sc

    t0 = time.perf_counter()
    sc.train_superres(args.model, steps=args.steps, channels=CHANNELS)
    print(f"trained x2 model: {args.steps} steps in {time.perf_counter() - t0:.0f} s")
    model = sc.build_network(CHANNELS)
    model.load_state_dict(torch.load(args.model, weights_only=True))
    skulls = {"ct_head": sc.load_ct_skull()[0], "synthetic999": sc.synthetic_skulls([999])[0]}
    print("skull         scale  nearest DSC  sparse SR DSC")
    for name, fine in skulls.items():
        up2 = sc.superres_input(fine, 2)
        sr2 = sc.superres(model, up2)
        print(f"{name:13s} x2     {dsc(up2, fine):11.3f}  {dsc(sr2, fine):13.3f}", flush=True)
        up4 = sc.superres_input(fine, 4)
        # chained x4: refine at the x2 grid, then at the fine grid
        coarse4 = torch.nn.functional.max_pool3d(torch.from_numpy(np.pad(fine, [(0, (-s) % 4) for s in fine.shape]))[None, None].float(), 4)
        grid2 = torch.nn.functional.interpolate(coarse4, scale_factor=2, mode="nearest")[0, 0].numpy() > 0
        refined2 = sc.superres(model, grid2)
        up_fine = np.repeat(np.repeat(np.repeat(refined2, 2, 0), 2, 1), 2, 2)[: fine.shape[0], : fine.shape[1], : fine.shape[2]]
        sr4 = sc.superres(model, up_fine)
        print(f"{name:13s} x4     {dsc(up4, fine):11.3f}  {dsc(sr4, fine):13.3f}", flush=True)


if __name__ == "__main__":
    main()
