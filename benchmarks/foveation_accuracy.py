"""Accuracy of soft foveation vs the paper's baselines on the synthetic FoV-trade-off benchmark (2D), on CPU.

Every method uses the same backbone (a tiny MONAI BasicUNet), the same initial weights (per seed), the same data,
the same number of steps and the same location sampler; only ``FoveatedSegmenter.mode`` differs:
soft foveation, each fixed scale, random (a fresh one-hot per location), average (1/D each).
Mean IoU is dataset-level (sum of intersections / sum of unions) over held-out images generated with other seeds.

Real-image variant (``--dataset mri``): 2D axial slices of the MNI "ch2" T1 head (1 mm, from the ``mri_ch2``
sample) with AAL atlas labels grouped into 4 classes: background, left hemisphere (odd AAL labels), right hemisphere
(even AAL labels), deep grey nuclei (AAL 71-78: caudate, putamen, pallidum, thalamus, both sides). Left and right
look alike locally (context: where is the midline?), the nuclei are small (resolution). Train on slices
z in [30, 70) and [86, 140) (every second), test on z in [74, 82] (every second): separated slice ranges.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/foveation_accuracy.py --iterations 1500
    OMP_NUM_THREADS=1 python benchmarks/foveation_accuracy.py --dataset mri --iterations 1000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from monai.networks.nets import BasicUNet

from monai_fovea.apps.foveation import evaluate_foveation, train_foveation
from monai_fovea.data.synthetic import FOV_TRADEOFF_CLASSES, fov_tradeoff
from monai_fovea.networks import FoveatedSegmenter

PATCH_SIZES = [32, 64, 128]
OUTPUT_SIZE = 32
STRIDE = 16


MRI_CLASSES = ("background", "left", "right", "deep_nuclei")


def make_data(n: int, first_seed: int, size: int) -> list[dict]:
    return [fov_tradeoff((size, size), seed=first_seed + i, num_fine=10, num_context=3) for i in range(n)]


def make_mri_data() -> tuple[list[dict], list[dict]]:
    """Axial slices of ch2 + grouped AAL labels; train and test from separated slice ranges."""
    import nibabel as nib

    from monai_fovea.data import samples

    files = samples.fetch("mri_ch2")
    img = np.asarray(nib.load(files["image"]).dataobj, dtype=np.float32) / 255.0
    aal = np.asarray(nib.load(files["aal"]).dataobj).astype(np.int64)
    lab = np.zeros_like(aal)
    lateral = (aal > 0) & ~np.isin(aal, range(71, 79))
    lab[lateral & (aal % 2 == 1)] = 1
    lab[lateral & (aal % 2 == 0)] = 2
    lab[np.isin(aal, range(71, 79))] = 3

    def _slices(zs):
        return [{"image": img[None, :, :, z].copy(), "label": lab[None, :, :, z].copy(), "z": z} for z in zs]

    train = _slices(list(range(30, 70, 2)) + list(range(86, 140, 2)))
    test = _slices(range(74, 83, 2))
    return train, test


def build(method: str, seed: int, num_classes: int = len(FOV_TRADEOFF_CLASSES)) -> FoveatedSegmenter:
    torch.manual_seed(seed)  # identical backbone and head initialisation for every method
    backbone = BasicUNet(2, 1, num_classes, features=(8, 8, 16, 32, 64, 8))
    if method == "soft_warmup":
        method = "soft"
    mode, fixed = (method, 0) if not method.startswith("fixed") else ("fixed", int(method[5:]))
    return FoveatedSegmenter(backbone, PATCH_SIZES, OUTPUT_SIZE, spatial_dims=2, in_channels=1, mode=mode,
                             fixed_index=fixed, stride=STRIDE)


@torch.no_grad()
def apsm_by_class(model: FoveatedSegmenter, data: list[dict], classes=FOV_TRADEOFF_CLASSES) -> dict[str, float]:
    """Mean APSM (sum_d f_d s_d) over low-resolution cells grouped by the class at the cell centre."""
    model.eval()
    sums: dict[str, list[float]] = {}
    for item in data:
        img = torch.as_tensor(item["image"])[None]
        apsm = model.average_patch_size(model.scale_weights(model.lowres(img)))[0]
        gy, gx = apsm.shape
        lab = item["label"][0]
        for i in range(gy):
            for j in range(gx):
                y, x = min(i * STRIDE + STRIDE // 2, lab.shape[0] - 1), min(j * STRIDE + STRIDE // 2, lab.shape[1] - 1)
                sums.setdefault(classes[lab[y, x]], []).append(float(apsm[i, j]))
    return {k: float(np.mean(v)) for k, v in sorted(sums.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("synthetic", "mri"), default="synthetic")
    ap.add_argument("--methods", default="soft,fixed0,fixed1,fixed2,random,average")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--train-images", type=int, default=16)
    ap.add_argument("--test-images", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--json", default=None, help="write all results to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.dataset == "synthetic":
        classes = FOV_TRADEOFF_CLASSES
        train = make_data(args.train_images, 0, args.size)
        test = make_data(args.test_images, 10_000, args.size)  # held-out: generator seeds never used for training
        print(f"data: {args.train_images} train / {args.test_images} held-out synthetic images {args.size}x{args.size}",
              end="")
    else:
        classes = MRI_CLASSES
        train, test = make_mri_data()
        print(f"data: ch2 T1 axial slices, {len(train)} train (z {train[0]['z']}..69, 86..{train[-1]['z']}) / "
              f"{len(test)} held-out (z {test[0]['z']}..{test[-1]['z']})", end="")
    print(f", patch sizes {PATCH_SIZES} -> {OUTPUT_SIZE}px, stride {STRIDE}, {args.iterations} steps x 16 "
          f"locations, class-balanced location sampling, seeds {args.seeds}")
    k = len(classes)
    results = {}
    for method in args.methods.split(","):
        for seed in args.seeds:
            t0 = time.time()
            model = build(method, seed, k)
            if method == "soft_warmup":
                # diagnostic, not a paper method: the backbone first learns every scale (random one-hot per
                # location, half the steps), then head and backbone train jointly in soft mode (the other half)
                model.mode = "random"
                train_foveation(model, train, num_classes=k, num_iterations=args.iterations // 2, balanced=True,
                                lr=args.lr, seed=seed, progress=False)
                model.mode = "soft"
                train_foveation(model, train, num_classes=k, num_iterations=args.iterations - args.iterations // 2,
                                balanced=True, lr=args.lr, seed=seed + 1, progress=False)
            else:
                train_foveation(model, train, num_classes=k, num_iterations=args.iterations, balanced=True,
                                lr=args.lr, seed=seed, progress=False)
            res = evaluate_foveation(model, test, num_classes=k)
            if method.startswith("soft") or method in ("hard", "gumbel"):  # modes where the head chooses
                res["apsm_by_class"] = apsm_by_class(model, test, classes)
            res["seconds"] = time.time() - t0
            results.setdefault(method, []).append(res)
            iou = " ".join(f"{v:.3f}" for v in res["iou"])
            print(f"{method:8s} seed {seed}: mean IoU {res['mean_iou']:.3f}  per class [{iou}]  "
                  f"({res['seconds']:.0f} s)", flush=True)
            if "apsm_by_class" in res:
                apsm = {k: round(v, 1) for k, v in res["apsm_by_class"].items()}
                print(f"          {method} APSM by class (px):", apsm)
    print("\nmethod    mean IoU (mean ± sd over seeds)   " + "  ".join(f"{c[:10]:>10s}" for c in classes))
    for method, runs in results.items():
        m = np.array([r["mean_iou"] for r in runs])
        per = np.nanmean(np.array([r["iou"] for r in runs], dtype=float), axis=0)
        print(f"{method:8s}  {m.mean():.3f} ± {m.std():.3f}                   "
              + "  ".join(f"{v:10.3f}" for v in per))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
