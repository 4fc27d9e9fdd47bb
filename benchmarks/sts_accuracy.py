"""Segment-then-segment vs a U-Net on the uniformly downscaled input, at network input sizes 32, 64, 128.

For every data set and input size S, two tiny BasicUNets are trained (``monai_fovea.apps.segment_then_segment.train``):
the coarse net on tiles downscaled to S (this *is* the baseline "U-Net on the downscaled image"), and the fine net on
S-sized ground-truth component crops. Both are evaluated on held-out images at full resolution: the baseline's
probabilities upsampled (bilinear) vs segment-then-segment (coarse boxes → fine crops → pasted). Per-image DSC,
precision and recall (1 when both empty), averaged over the test images.

Held-out splits (no pixel in two parts):
  dsb2018   -- ``dsb2018_nuclei`` sample, 512², 1 channel: train rows 0-255, val rows 256-511 x cols 0-255,
               test rows 256-511 x cols 256-511 (one 256² tile, 29 nuclei)
  cellseg   -- ``cellseg_he`` sample, three 256² H&E patches: train patch 1, val patch 2, test patch 3 (58 nuclei)
  synthetic -- ``small_objects`` 256², 25 objects of radius 3-8 px: train seeds 0-3, val seed 100, test seeds 200-203
  synthetic3d -- ``small_objects`` 96³, 12 objects of radius 3-7 voxels: train seeds 0-1, val 100, test 200-201
               (only with ``--dims 3``; sizes are the coarse/fine cube side)

Run (CPU, about 10 minutes for the 2D part with the defaults):
    OMP_NUM_THREADS=1 python benchmarks/sts_accuracy.py
    OMP_NUM_THREADS=1 python benchmarks/sts_accuracy.py --datasets synthetic3d --sizes 32 48 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from monai_fovea.apps.segment_then_segment import build_unet, evaluate, sample_split, train
from monai_fovea.data.synthetic import small_objects


def synthetic_items(seeds, size=(256, 256), n=25, radius=(3.0, 8.0)):
    items = []
    for s in seeds:
        img, inst = small_objects(size, num_objects=n, radius=radius, seed=s)
        items.append({"image": np.clip(img, 0, 1).astype(np.float32), "label": (inst > 0).astype(np.float32)})
    return items


def dataset(name: str):
    """(train, val, test, tile_size, in_channels, spatial_dims)"""
    if name in ("dsb2018", "cellseg"):
        sample = {"dsb2018": "dsb2018_nuclei", "cellseg": "cellseg_he"}[name]
        parts = [sample_split(sample, p) for p in ("train", "val", "test")]
        return (*parts, 256, parts[0][0]["image"].shape[0], 2)
    if name == "synthetic":
        return synthetic_items(range(4)), synthetic_items([100]), synthetic_items(range(200, 204)), 256, 1, 2
    if name == "synthetic3d":
        kw = dict(size=(96, 96, 96), n=12, radius=(3.0, 7.0))
        return (synthetic_items(range(2), **kw), synthetic_items([100], **kw), synthetic_items([200, 201], **kw), 96, 1, 3)
    raise ValueError(f"unknown dataset {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["dsb2018", "cellseg", "synthetic"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--samples-per-epoch", type=int, default=32)
    parser.add_argument("--features", nargs=6, type=int, default=[8, 16, 32, 64, 128, 8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.datasets:
        train_items, val_items, test_items, tile, channels, dims = dataset(name)
        for size in args.sizes:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                train(train_items, val_items, tmp, coarse_size=size, fine_size=size, tile_size=tile, spatial_dims=dims,
                      in_channels=channels, features=args.features, coarse_epochs=args.epochs, fine_epochs=args.epochs,
                      samples_per_epoch=args.samples_per_epoch, batch_size=8 if dims == 2 else 2, lr=1e-3,
                      device=args.device, progress=False, init_fine_from_coarse=True)
                coarse, fine = build_unet(dims, channels, args.features), build_unet(dims, channels, args.features)
                coarse.load_state_dict(torch.load(f"{tmp}/coarse.pt", weights_only=True))
                fine.load_state_dict(torch.load(f"{tmp}/model.pt", weights_only=True))
            # test tiles have the training tile size, so coarse_size = size means the same downscale as in training
            scores = evaluate(test_items, coarse, fine, size, size, args.device)
            row = {"dataset": name, "size": size, "downscale": tile / size, "seconds": time.perf_counter() - t0, **{
                f"{m}_{k}": v for m, s in scores.items() for k, v in s.items()}}
            rows.append(row)
            print(f"{name:11s} S={size:4d} ({tile / size:.1f}x)  DSC {row['coarse_dice']:.3f} -> {row['sts_dice']:.3f}  "
                  f"precision {row['coarse_precision']:.3f} -> {row['sts_precision']:.3f}  "
                  f"recall {row['coarse_recall']:.3f} -> {row['sts_recall']:.3f}  "
                  f"(DSC ratio {row['sts_dice'] / max(row['coarse_dice'], 1e-8):.2f}, "
                  f"recall ratio {row['sts_recall'] / max(row['coarse_recall'], 1e-8):.2f}; {row['seconds']:.0f} s)",
                  flush=True)
    print("\n| data | input size (downscale) | DSC: downscaled U-Net → STS | precision | recall |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['size']} ({r['downscale']:.1f}×) | {r['coarse_dice']:.3f} → {r['sts_dice']:.3f} | "
              f"{r['coarse_precision']:.3f} → {r['sts_precision']:.3f} | {r['coarse_recall']:.3f} → {r['sts_recall']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
