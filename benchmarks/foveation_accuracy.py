"""Accuracy of soft foveation vs the paper's baselines on the synthetic FoV-trade-off benchmark (2D), on CPU.

Every method uses the same backbone (a tiny MONAI BasicUNet), the same initial weights (per seed), the same data,
the same number of steps and the same location sampler; only ``FoveatedSegmenter.mode`` differs:
soft foveation, each fixed scale, random (a fresh one-hot per location), average (1/D each).
Mean IoU is dataset-level (sum of intersections / sum of unions) over held-out images generated with other seeds.

Methods are ``FoveatedSegmenter`` modes with the recipe's options appended as ``+token`` (:data:`OPTIONS`, e.g.
``soft+prior+lr10``); ``fixed0..fixed2`` come first: the **oracle** (per tile, the best of the separately trained
fixed-scale models, chosen with the test labels) and the auxiliary prior's targets are computed from them. The
token ``out`` builds the network with ``fusion="output"`` (each scale segmented in its own geometry, the class
probabilities mixed; ``FoveatedSegmenter``); ``fixed1+out`` etc. are then the fixed-scale models of that fusion,
and the oracle and the prior of ``+out`` methods use those.

Real-image variants: the MNI "ch2" T1 head (1 mm, from the ``mri_ch2`` sample) with AAL atlas labels grouped into
4 classes: background, left hemisphere (odd AAL labels), right hemisphere (even AAL labels), deep grey nuclei
(AAL 71-78: caudate, putamen, pallidum, thalamus, both sides). Left and right look alike locally (context: where is
the midline?), the nuclei are small (resolution). ``--dataset mri``: 2D axial slices, ``--dataset mri3d``: 3D
sub-volumes (FoVs 16/32/64 voxels -> 16^3); the splits are separated slice ranges (:data:`DESCRIPTION`).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/foveation_accuracy.py --seeds 0 1 2 \\
        --methods fixed0,fixed1,fixed2,random,average,soft,soft+prior
    OMP_NUM_THREADS=1 python benchmarks/foveation_accuracy.py --dataset mri --iterations 4000 --val-interval 500
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import BasicUNet, UNet

from monai_fovea.apps.foveation import evaluate_foveation, train_foveation
from monai_fovea.apps.foveation_oracle import add_scale_targets, oracle_evaluate
from monai_fovea.data.synthetic import FOV_TRADEOFF_CLASSES, fov_tradeoff
from monai_fovea.networks import FUSIONS, FoveatedSegmenter
from monai_fovea.transforms.foveation.array import grid_centers

PATCH_SIZES = [32, 64, 128]
OUTPUT_SIZE = 32
STRIDE = 16


MRI_CLASSES = ("background", "left", "right", "deep_nuclei")


def make_data(n: int, first_seed: int, size: int) -> list[dict]:
    return [fov_tradeoff((size, size), seed=first_seed + i, num_fine=10, num_context=3) for i in range(n)]


PATCH_SIZES_3D = [16, 32, 64]
OUTPUT_SIZE_3D = 16
STRIDE_3D = 8

#: train / validation (curves) / held-out split of the ch2 head, by axial slice z (separated ranges)
TRAIN_Z = list(range(30, 66, 2)) + list(range(94, 140, 2))
VAL_Z = [68, 70, 90, 92]
TEST_Z = list(range(74, 83, 2))
DESCRIPTION = {
    "mri": f"2D axial slices: {len(TRAIN_Z)} train (z 30..64, 94..138, every 2nd), validation z {VAL_Z}, "
           f"held-out z {TEST_Z}",
    "mri3d": "3D: train sub-volumes z 0..65 and 94..180, held-out slab z 66..93 (whole slab scored)",
}


def _mri_volume() -> tuple[np.ndarray, np.ndarray]:
    """The ch2 T1 (scaled to [0, 1]) and the grouped AAL labels (see the module docstring), [x, y, z]."""
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
    return img, lab


def make_mri_data() -> tuple[list[dict], list[dict], list[dict]]:
    """Axial slices of ch2 + grouped AAL labels: train, validation and held-out from separated slice ranges."""
    img, lab = _mri_volume()

    def _slices(zs):
        return [{"image": img[None, :, :, z].copy(), "label": lab[None, :, :, z].copy(), "z": z} for z in zs]

    return _slices(TRAIN_Z), _slices(VAL_Z), _slices(TEST_Z)


def make_mri_data_3d() -> tuple[list[dict], list[dict], list[dict]]:
    """Sub-volumes of ch2 + grouped AAL labels: train z < 66 and z >= 94, held-out slab 66 <= z < 94."""
    img, lab = _mri_volume()

    def _vol(z0, z1):
        return {"image": img[None, :, :, z0:z1].copy(), "label": lab[None, :, :, z0:z1].copy(), "z": (z0, z1)}

    return [_vol(0, 66), _vol(94, img.shape[2])], [], [_vol(66, 94)]


#: option tokens of a method name ("soft+prior+lr10"): the recipe's config keys they set (see
#: monai_fovea.apps.foveation_schedule); "{half}" / "{all}" = half / all the steps
OPTIONS = {
    "chunks": {"location_chunks": 16},  # the authors' update: backbone per location, head once per image
    "lr10": {"head_lr_scale": 10.0},
    "warmup": {"warmup_mode": "random", "warmup_iterations": "{half}"},
    "warmavg": {"warmup_mode": "average", "warmup_iterations": "{half}"},
    "entpos": {"entropy_weight": 0.05},
    "entneg": {"entropy_weight": -0.05},
    "anneal": {"tau_start": 1.0, "tau_end": 0.1},
    "prior": {"prior_weight": 1.0, "prior_iterations": "{half}"},
    "priorfull": {"prior_weight": 1.0, "prior_iterations": "{all}"},
}


def parse_method(method: str, iterations: int) -> tuple[str, int, dict, str]:
    """``"soft+prior+lr10"`` → (mode, fixed_index, config overrides, fusion)."""
    base, *tokens = method.split("+")
    fusion = "output" if "out" in tokens else "input"
    tokens = [t for t in tokens if t != "out"]
    mode, fixed = (base, 0) if not base.startswith("fixed") else ("fixed", int(base[5:]))
    # the paper's plain joint training unless a token says otherwise (train.json's defaults are the winning options)
    overrides: dict = {"head_lr_scale": 1.0, "prior_weight": 0.0}
    for tok in tokens:
        if tok not in OPTIONS:
            raise SystemExit(f"unknown option {tok!r} in method {method!r}; options: {sorted(OPTIONS)}")
        for k, v in OPTIONS[tok].items():
            overrides[k] = {"{half}": iterations // 2, "{all}": iterations}.get(v, v) if isinstance(v, str) else v
    return mode, fixed, overrides, fusion


def build(method: str, seed: int, num_classes: int, spatial_dims: int = 2) -> FoveatedSegmenter:
    mode, fixed, _, fusion = parse_method(method, 1)
    torch.manual_seed(seed)  # identical backbone and head initialisation for every method
    if spatial_dims == 2:
        backbone = BasicUNet(2, 1, num_classes, features=(8, 8, 16, 32, 64, 8))
        sizes, out, stride = PATCH_SIZES, OUTPUT_SIZE, STRIDE
    else:
        # BasicUNet's four poolings would leave 1 voxel of a 16^3 patch (instance norm needs more): MONAI's UNet
        backbone = UNet(3, 1, num_classes, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1)
        sizes, out, stride = PATCH_SIZES_3D, OUTPUT_SIZE_3D, STRIDE_3D
    return FoveatedSegmenter(backbone, sizes, out, spatial_dims=spatial_dims, in_channels=1, mode=mode,
                             fixed_index=fixed, stride=stride, fusion=fusion)


@torch.no_grad()
def apsm_by_class(model: FoveatedSegmenter, data: list[dict], classes) -> dict[str, float]:
    """Mean APSM (sum_d f_d s_d) over low-resolution cells grouped by the class at the cell centre."""
    was = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    for item in data:
        img = torch.as_tensor(item["image"])[None].float()
        apsm = model.average_patch_size(model.scale_weights(model.lowres(img)))[0]
        centers, grid = grid_centers(img.shape[2:], model.stride)
        lab = torch.as_tensor(item["label"])[0]
        idx = torch.minimum(centers, torch.tensor(lab.shape) - 1)
        cls = lab[tuple(idx.t())].reshape(-1)
        for c, a in zip(cls.tolist(), apsm.reshape(-1).tolist()):
            sums.setdefault(classes[c], []).append(a)
    model.train(was)
    return {k: float(np.mean(v)) for k, v in sorted(sums.items())}


def context_fine_ratio(apsm: dict[str, float], context: tuple[str, ...], fine: tuple[str, ...]) -> float:
    """Mean APSM on the context classes / mean APSM on the fine classes (the issue asks for >= 1.5)."""
    return float(np.mean([apsm[c] for c in context if c in apsm]) / np.mean([apsm[c] for c in fine if c in apsm]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("synthetic", "mri", "mri3d"), default="synthetic")
    ap.add_argument("--methods", default="fixed0,fixed1,fixed2,random,average,soft",
                    help="comma list; fixed0..fixedD-1 first (the oracle and the prior use them); options as "
                         "'+token': " + ", ".join(OPTIONS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--train-images", type=int, default=16)
    ap.add_argument("--test-images", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--val-interval", type=int, default=0,
                    help="validation every this many steps, on the validation split (curves); 0: none")
    ap.add_argument("--prior-margin", type=float, default=0.05)
    ap.add_argument("--cache", default=None, metavar="DIR",
                    help="keep the trained fixed-scale models here and reuse them (same dataset, seed, steps, lr)")
    ap.add_argument("--json", default=None, help="write all results to this file")
    ap.add_argument("--summarize", nargs="+", default=None, metavar="JSON",
                    help="print the summary table of earlier runs' --json files (e.g. one per seed) and exit")
    ap.add_argument("--plot", default=None, metavar="PNG", help="with --summarize: training curves to this PNG")
    args = ap.parse_args()
    if args.summarize:
        merged: dict = {}
        for path in args.summarize:
            with open(path) as f:
                run = json.load(f)
            for method, runs in run["results"].items():
                known = merged.setdefault(method, [])
                # a run repeated in another file (e.g. a cached fixed-scale model) counts once
                known.extend(r for r in runs if all(r.get("iou") != k.get("iou") for k in known))
        dataset = run["args"]["dataset"]
        print_summary(merged, FOV_TRADEOFF_CLASSES if dataset == "synthetic" else MRI_CLASSES)
        if args.plot:
            plot_curves(merged, args.plot, f"{dataset}, {run['args']['iterations']} steps")
        return
    torch.set_num_threads(1)
    val: list[dict] = []
    if args.dataset == "synthetic":
        classes, context, fine = FOV_TRADEOFF_CLASSES, FOV_TRADEOFF_CLASSES[3:], FOV_TRADEOFF_CLASSES[1:3]
        train = make_data(args.train_images, 0, args.size)
        test = make_data(args.test_images, 10_000, args.size)  # held-out: generator seeds never used for training
        val = make_data(4, 20_000, args.size) if args.val_interval else []
        print(f"data: {args.train_images} train / {args.test_images} held-out synthetic images {args.size}x{args.size}",
              end="")
        dims = 2
    else:
        classes, context, fine = MRI_CLASSES, MRI_CLASSES[1:3], MRI_CLASSES[3:]
        dims = 2 if args.dataset == "mri" else 3
        train, val, test = make_mri_data() if dims == 2 else make_mri_data_3d()
        print(f"data: ch2 T1 + AAL, {DESCRIPTION[args.dataset]}", end="")
        if not args.val_interval:
            val = []
    sizes = (PATCH_SIZES, OUTPUT_SIZE, STRIDE) if dims == 2 else (PATCH_SIZES_3D, OUTPUT_SIZE_3D, STRIDE_3D)
    print(f", patch sizes {sizes[0]} -> {sizes[1]}px, stride {sizes[2]}, {args.iterations} steps x 16 "
          f"locations, class-balanced location sampling, seeds {args.seeds}", flush=True)
    k = len(classes)
    results: dict = {}
    for seed in args.seeds:
        fixed_models: dict[tuple[str, int], FoveatedSegmenter] = {}  # (fusion, scale index)
        prior_items: dict[str, list[dict]] = {}
        for method in args.methods.split(","):
            mode, fixed, overrides, fusion = parse_method(method, args.iterations)
            t0 = time.time()
            model = build(method, seed, k, dims)
            items = train
            if overrides.get("prior_weight"):
                n = model.num_scales
                if any((fusion, d) not in fixed_models for d in range(n)):
                    suffix = "+out" if fusion == "output" else ""
                    raise SystemExit(f"{method} needs fixed0{suffix}..fixed{n - 1}{suffix} earlier in --methods "
                                     "(the prior's targets)")
                if fusion not in prior_items:
                    prior_items[fusion] = add_scale_targets(train, [fixed_models[fusion, d] for d in range(n)],
                                                            margin=args.prior_margin)
                items = prior_items[fusion]
            cached = None
            if args.cache and mode == "fixed":  # fixed-scale models are reused by later runs (oracle, prior)
                # fixed0+out is fixed0 (the smallest FoV's region is the whole prediction): one cache entry
                key = method if (fusion, fixed) != ("output", 0) else "fixed0"
                cached = Path(args.cache) / f"{args.dataset}_{key}_seed{seed}_{args.iterations}it_lr{args.lr}.pt"
            if cached is not None and cached.exists():
                saved = torch.load(cached, weights_only=False)
                model.load_state_dict(saved["model"])
                hist = saved["history"]
            else:
                hist = train_foveation(model, items, val or None, num_classes=k, num_iterations=args.iterations,
                                       balanced=True, lr=args.lr, seed=seed, progress=False,
                                       val_interval=args.val_interval, overrides=overrides)
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    torch.save({"model": model.state_dict(), "history": hist}, cached)
            res = evaluate_foveation(model, test, num_classes=k)
            res["curve"] = hist["val"]
            loss = np.asarray(hist["loss"])  # training loss, mean per 100 steps (convergence where no validation)
            res["loss_curve"] = [float(loss[i : i + 100].mean()) for i in range(0, len(loss), 100)]
            if mode in ("soft", "hard", "gumbel"):  # modes where the head chooses
                res["apsm_by_class"] = apsm_by_class(model, test, classes)
                res["context_fine_ratio"] = context_fine_ratio(res["apsm_by_class"], context, fine)
            res["seconds"] = time.time() - t0
            res["seed"] = seed
            results.setdefault(method, []).append(res)
            if mode == "fixed":
                fixed_models[fusion, fixed] = model
                if fixed == 0:  # the smallest FoV's model is the same in both fusions
                    for other in FUSIONS:
                        fixed_models.setdefault((other, 0), model)
            iou = " ".join(f"{v:.3f}" for v in res["iou"])
            print(f"{method:18s} seed {seed}: mean IoU {res['mean_iou']:.3f}  per class [{iou}]  "
                  f"({res['seconds']:.0f} s)", flush=True)
            if "apsm_by_class" in res:
                apsm = {c: round(v, 1) for c, v in res["apsm_by_class"].items()}
                print(f"{'':18s} APSM by class (px): {apsm}, context/fine {res['context_fine_ratio']:.2f}", flush=True)
        n = len(sizes[0])
        for fusion, name in (("input", "oracle"), ("output", "oracle+out")):
            if not all((fusion, d) in fixed_models for d in range(n)):
                continue
            orc = oracle_evaluate([fixed_models[fusion, d] for d in range(n)], test, num_classes=k)
            results.setdefault(name, []).append(orc)
            print(f"{name:18s} seed {seed}: mean IoU {orc['mean_iou']:.3f}  per class "
                  f"[{' '.join(f'{v:.3f}' for v in orc['iou'])}]  tiles per scale "
                  f"{[round(c, 2) for c in orc['chosen']]}", flush=True)
        if args.json:  # after every seed: a long run killed later keeps what it measured
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "results": results}, f, indent=1)
    print_summary(results, classes)


def plot_curves(results: dict, path: str, title: str) -> None:
    """Validation mean IoU (where measured) and training loss per method against the step, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for method, runs in results.items():
        if method == "oracle":
            continue
        curves = [r["curve"] for r in runs if r.get("curve")]
        if curves:
            n = min(len(c) for c in curves)
            steps = [c[0] for c in curves[0][:n]]
            axes[0].plot(steps, np.mean([[v for _, v in c[:n]] for c in curves], 0), marker="o", label=method)
        losses = [r["loss_curve"] for r in runs if r.get("loss_curve")]
        if losses:
            n = min(len(c) for c in losses)
            axes[1].plot(np.arange(n) * 100 + 50, np.mean([c[:n] for c in losses], 0), label=method)
    axes[0].set(xlabel="step", ylabel="validation mean IoU", title=f"validation ({title})")
    axes[1].set(xlabel="step", ylabel="training loss (mean of 100 steps)", title=f"training loss ({title})",
                yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"curves: {path}")


def print_summary(results: dict, classes) -> None:
    oracles = {name: np.array([r["mean_iou"] for r in results.get(name, [])]) for name in ("oracle", "oracle+out")}
    best_fixed = None
    fixed = {m: np.array([r["mean_iou"] for r in runs]) for m, runs in results.items() if m.startswith("fixed")}
    if fixed:
        best_fixed = max(fixed, key=lambda m: fixed[m].mean())
    print("\nmethod              mean IoU (mean ± sd)  per seed              vs best fixed  gap to oracle  "
          "context/fine APSM  " + "  ".join(f"{c[:10]:>10s}" for c in classes))
    for method, runs in results.items():
        m = np.array([r["mean_iou"] for r in runs])
        per = np.nanmean(np.array([r["iou"] for r in runs], dtype=float), axis=0)
        seeds = " ".join(f"{v:.3f}" for v in m)
        vs = f"{(m - fixed[best_fixed][:len(m)]).mean():+.3f}" if best_fixed and len(fixed[best_fixed]) >= len(m) else ""
        oracle = oracles["oracle+out" if "+out" in method else "oracle"]  # the oracle of the same fusion
        gap = f"{(m - oracle[:len(m)]).mean():+.3f}" if len(oracle) >= len(m) and "oracle" not in method else ""
        ratio = [r["context_fine_ratio"] for r in runs if "context_fine_ratio" in r]
        rs = " ".join(f"{v:.2f}" for v in ratio)
        print(f"{method:18s}  {m.mean():.3f} ± {m.std():.3f}       {seeds:20s}  {vs:>13s}  {gap:>13s}  {rs:>17s}  "
              + "  ".join(f"{v:10.3f}" for v in per))
    if best_fixed:
        print(f"(best fixed scale: {best_fixed})")


if __name__ == "__main__":
    main()
