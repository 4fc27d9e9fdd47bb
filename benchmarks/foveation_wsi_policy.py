"""Foveation against fixed fields of view on the WSI bundle's held-out half, and where its head looks (APSM).

For each trained model (``name=checkpoint[:mode[:fixed_index]]``) the bundle's own ``evaluate.json`` (layered on
``train.json``: the streaming ``WSIFoveatedInferer`` on the slide file, tissue mask on, scored on the held-out
bottom half) gives per-class IoU. For models whose head chooses (soft/hard/gumbel) the head's APSM over the whole
sample slide is summarised on tissue cells (cells of the 64-px grid whose centre pixel is tissue by the label rule):
10th / 50th / 90th percentiles, the 10-90 spread against the FoV range, and the mean APSM per class. With all three
``fixedD`` models given, the per-tile **oracle** over them (chosen with the held-out labels) is measured too.

Usage (the checkpoints come from the bundle's ``train.json``; see docs/BENCHMARKS.md for the training commands)::

    OMP_NUM_THREADS=2 python benchmarks/foveation_wsi_policy.py \\
        fixed0=runs/fixed0/model.pt:fixed:0 fixed1=runs/fixed1/model.pt:fixed:1 fixed2=runs/fixed2/model.pt:fixed:2 \\
        soft=bundles/foveation_wsi_segmentation/models/model.pt:soft --figure apsm.png --json wsi_policy.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from monai_fovea.apps.bundles import bundle_root
from monai_fovea.apps.foveation_oracle import oracle_evaluate
from monai_fovea.apps.foveation_wsi import CLASS_NAMES, _slide_and_labels, load_slide_split
from monai_fovea.data import samples
from monai_fovea.transforms.foveation.array import grid_centers

CONFIGS = Path(bundle_root("foveation_wsi_segmentation")) / "configs"


def evaluate(checkpoint: str, mode: str, fixed_index: int, out: Path, fusion: str | None = None
             ) -> tuple[dict, torch.nn.Module]:
    """The bundle's evaluate.json on the held-out half with these weights: its metrics.json and the network."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update({"checkpoint": checkpoint, "mode": mode, "fixed_index": fixed_index, "output_dir": str(out),
                   "device": "cpu", **({"fusion": fusion} if fusion else {})})
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("validate#evaluator").run()
    return json.loads((out / "metrics.json").read_text()), parser.get_parsed_content("network")


@torch.no_grad()
def head_policy(network, slide: str) -> dict:
    """APSM percentiles over tissue cells of the whole slide and the mean APSM by class of the cell centre."""
    rgb, labels = _slide_and_labels(slide, "tifffile")
    image = torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float()[None] / 255.0
    network.eval()
    apsm = network.average_patch_size(network.scale_weights(network.lowres(image)))[0]
    centers, grid = grid_centers(image.shape[2:], network.stride)
    idx = torch.minimum(centers, torch.tensor(labels.shape) - 1)
    cls = torch.from_numpy(labels.copy())[tuple(idx.t())].reshape(grid)
    tissue = apsm[cls > 0].numpy()
    p10, p50, p90 = np.percentile(tissue, [10, 50, 90])
    sizes = network.scale_sizes
    fov_range = float(sizes.max() - sizes.min())
    return {
        "apsm_p10_p50_p90": [float(p10), float(p50), float(p90)],
        "spread_p90_minus_p10": float(p90 - p10),
        "spread_over_fov_range": float((p90 - p10) / fov_range),
        "fov_range": [float(sizes.min()), float(sizes.max())],
        "apsm_by_class": {CLASS_NAMES[k]: float(apsm[cls == k].mean()) for k in range(len(CLASS_NAMES))
                          if bool((cls == k).any())},
        "apsm_map": apsm.numpy(),
    }


def figure(policy: dict, slide: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgb, labels = _slide_and_labels(slide, "tifffile")
    pal = np.array([[255, 255, 255], [232, 150, 205], [60, 30, 120], [240, 180, 0]], np.uint8)
    fig, axes = plt.subplots(1, 3, figsize=(13, 6.2))
    axes[0].imshow(rgb[::4, ::4])
    axes[0].set_title("sample slide (held-out half below the line)")
    axes[1].imshow(pal[labels[::4, ::4]])
    axes[1].set_title("labels: tissue (pink), nuclei (purple),\nepithelium (yellow)", fontsize=10)
    lo, hi = policy["fov_range"]
    im = axes[2].imshow(policy["apsm_map"], vmin=lo, vmax=hi, cmap="viridis")
    axes[2].set_title("learned APSM (px of field of view)")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    h = rgb.shape[0]
    for ax, scale in zip(axes, (4, 4, 64)):
        ax.axhline(h // 2 / scale, color="red", lw=1)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"figure: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="name=checkpoint[:mode[:fixed_index]]")
    ap.add_argument("--figure", default=None, help="PNG of slide, labels and the APSM of the first soft model")
    ap.add_argument("--json", default=None)
    ap.add_argument("--fusion", choices=("input", "output"), default=None,
                    help="the networks' fusion (default: train.json's); the fixed models of the oracle use it too")
    args = ap.parse_args()
    slide = str(samples.fetch("cmu_slide")["image"])
    results, fixed = {}, {}
    for spec in args.models:
        name, rest = spec.split("=", 1)
        parts = rest.split(":")
        ckpt, mode, index = parts[0], parts[1] if len(parts) > 1 else "soft", parts[2] if len(parts) > 2 else "0"
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            metrics, network = evaluate(ckpt, mode, int(index), Path(tmp), args.fusion)
        res = {"iou": metrics["iou"], "mean_iou": metrics["mean_iou"], "mode": mode, "checkpoint": ckpt}
        if mode == "fixed":
            fixed[int(index)] = network
        else:
            policy = head_policy(network, slide)
            if args.figure and "apsm_map" in policy and not any("apsm_p10_p50_p90" in r for r in results.values()):
                figure(policy, slide, args.figure)
            policy.pop("apsm_map")
            res["policy"] = policy
        res["seconds"] = round(time.time() - t0, 1)
        results[name] = res
        iou = " ".join(f"{k} {v:.3f}" for k, v in metrics["iou"].items())
        print(f"{name:12s} held-out mean IoU {metrics['mean_iou']:.3f} ({iou})", flush=True)
        if "policy" in res:
            p = res["policy"]
            print(f"{'':12s} APSM on tissue p10/p50/p90 {[round(v, 1) for v in p['apsm_p10_p50_p90']]} px, "
                  f"spread {p['spread_p90_minus_p10']:.1f} px = {p['spread_over_fov_range']:.2f} of the FoV range; "
                  f"by class { {k: round(v, 1) for k, v in p['apsm_by_class'].items()} }", flush=True)
    if sorted(fixed) == [0, 1, 2]:
        test = load_slide_split(slide, "test")
        item = {"image": test["image"], "label": test["label"][None]}
        orc = oracle_evaluate([fixed[d].eval() for d in range(3)], [item], num_classes=len(CLASS_NAMES))
        results["oracle"] = orc
        print(f"{'oracle':12s} held-out mean IoU {orc['mean_iou']:.3f} "
              f"({' '.join(f'{c} {v:.3f}' for c, v in zip(CLASS_NAMES, orc['iou']))}); tiles per scale "
              f"{[round(c, 2) for c in orc['chosen']]}; the fixed models on the same in-memory tiles "
              f"{[round(v, 3) for v in orc['per_model_mean_iou']]}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
