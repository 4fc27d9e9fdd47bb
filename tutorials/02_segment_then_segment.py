# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 2: segment-then-segment, a coarse net finds objects and a fine net segments crops
#
# Shrinking a large image until it fits a network is the usual shortcut, but small objects end up only a few
# pixels wide and their boundaries are lost. Benčević et al. (Sensors 2023) keep the small network input and
# segment in two stages instead. A *coarse* network segments the uniformly downscaled image, just well enough to
# find where the objects are. A box is put around each connected component of that rough mask, scaled back to
# full resolution, made square and padded so the object keeps some context. A *fine* network then segments each
# box, cropped from the full-resolution image and resized to its small input size, and its masks are pasted back
# into the full image. Both networks get the same small input, yet objects are segmented at (almost) their full
# resolution.
#
# This tutorial runs the pipeline on the `dsb2018_nuclei` sample (a 512 x 512 fluorescence image with 125 nuclei,
# from the 2018 Data Science Bowl):
#
# 1. trains a tiny coarse U-Net on 256 px tiles downscaled to 32 px (8x), then a tiny fine U-Net on 32 px crops
#    around ground-truth nuclei (`RandComponentCropd`), with the bundle's own MONAI training workflow;
# 2. turns the coarse mask on a held-out quadrant into boxes with `ComponentBoxes` + `ExpandBoxes` and draws them;
# 3. segments the held-out quadrant with `SegmentThenSegmentInferer` and compares DSC and recall with the
#    coarse net alone (its mask upsampled to full resolution).

# %%
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write PNGs; no display needed
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from monai_fovea.apps.segment_then_segment import build_unet, fine_train_transform, sample_split, train
from monai_fovea.inferers import SegmentThenSegmentInferer
from monai_fovea.metrics import segmentation_scores
from monai_fovea.transforms import ComponentBoxes, CropResizeBoxes, ExpandBoxes

TILE = 256  # training tiles and the held-out quadrant are 256 x 256 px
COARSE = 32  # the coarse net sees them downscaled 8x: nuclei become 1-3 px blobs
FINE = 32  # the fine net sees 32 x 32 crops
MARGIN = FINE // 8  # box padding in full-resolution pixels (the reference's choice)
FEATURES = (8, 8, 16, 16, 32, 8)  # a tiny MONAI BasicUNet: 4 downsamplings, ~30k parameters

# %% [markdown]
# ## 1. Data: a held-out split of the sample
#
# `sample_split` cuts the one sample image into parts that share no pixel. The top half (256 x 512) is for
# training, the bottom-left quadrant for validation (choosing the best epoch) and the bottom-right quadrant
# (256 x 256) is the test image. Intensities are scaled to [0, 1] (1st-99.8th percentile) and the instance mask is
# binarised.


# %%
def load_data() -> tuple[dict, dict, dict]:
    """Training half, validation and held-out test quadrants: ``{"image": [1, H, W] float32, "label": [1, H, W] 0/1}``."""
    (train_item,) = sample_split("dsb2018_nuclei", "train")
    (val,) = sample_split("dsb2018_nuclei", "val")
    (test,) = sample_split("dsb2018_nuclei", "test")
    print(f"train {train_item['image'].shape}, val {val['image'].shape}, test {test['image'].shape}, "
          f"nuclei pixels in test: {100 * test['label'].mean():.1f} %")
    return train_item, val, test


# %% [markdown]
# ## 2. Training both networks with the bundle's recipe
#
# `train` runs the `segment_then_segment` bundle's `configs/train.json`, a MONAI workflow: a `SupervisedTrainer` for
# the coarse net, then one for the fine net (started from the best coarse net), each validated after every epoch
# by a `SupervisedEvaluator` with MONAI's `MeanDice`, keeping the best epoch. The two networks differ only in their
# training data, and both use MONAI transforms from the project:
#
# * `coarse_train_transform`: a random 256 px tile with the paper's shift/scale/rotate/flip augmentation,
#   downscaled to 32 px by area averaging, the same downscaling the inferer applies;
# * `fine_train_transform`: `RandComponentCropd` picks one ground-truth nucleus, jitters its box, makes it square,
#   pads it by `MARGIN` and resizes the crop to 32 px, so the fine net learns on the kind of crops it will see.
#
# The loss is soft Dice on the sigmoid output. Any config key can be given as a keyword (here the sizes, the
# epochs, the learning rate and the fine transform with a smaller jitter).


# %%
def train_both(train_item: dict, val: dict, model_dir: Path, epochs: int, samples_per_epoch: int) -> tuple:
    """The coarse and the fine net (best validation epochs) and the training history, via the bundle's train.json."""
    shutil.rmtree(model_dir, ignore_errors=True)  # the workflow resumes from what it finds there: start afresh
    history = train(
        [train_item], [val], model_dir, coarse_size=COARSE, fine_size=FINE, tile_size=TILE, features=list(FEATURES),
        coarse_epochs=epochs, fine_epochs=epochs, samples_per_epoch=samples_per_epoch, batch_size=8, lr=3e-3,
        fine_transform=fine_train_transform((FINE, FINE), max_shift=4, margin=MARGIN),
    )
    nets = []
    for name in ("coarse.pt", "model.pt"):  # plain state dicts, as the bundle ships them
        net = build_unet(2, 1, FEATURES)
        net.load_state_dict(torch.load(model_dir / name, weights_only=True))
        nets.append(net.eval())
    return nets[0], nets[1], history


# %% [markdown]
# ## 3. From the coarse mask to full-resolution boxes
#
# The inferer does this internally; here the transforms are called one by one to see what happens.
# `ComponentBoxes` gives one box per connected component of the 32 px coarse mask, as `[K, 4]`
# (`row0, col0, row1, col1`, end exclusive). `ExpandBoxes` multiplies them by the 8x scale, makes them square,
# pads them by `MARGIN` px, shifts them back inside the image and drops boxes smaller than 5 px.


# %%
def coarse_boxes(
    inferer: SegmentThenSegmentInferer, image: torch.Tensor, coarse_net: torch.nn.Module
) -> tuple[torch.Tensor, np.ndarray]:
    """Coarse probabilities ``[1, 32, 32]`` and full-resolution boxes ``[K, 4]`` of one image ``[1, H, W]``."""
    coarse_prob = inferer.coarse_probabilities(image[None], coarse_net)[0]
    boxes, _classes = ComponentBoxes(min_size=1)((coarse_prob > 0.5).numpy())
    scale = TILE / COARSE
    expanded = ExpandBoxes(scale=scale, margin=MARGIN, square=True, min_size=5, image_size=image.shape[1:])(boxes)
    print(f"{len(boxes)} coarse components -> {len(expanded)} boxes; side lengths "
          f"{np.min(expanded[:, 2] - expanded[:, 0]) if len(expanded) else 0}-"
          f"{np.max(expanded[:, 2] - expanded[:, 0]) if len(expanded) else 0} px")
    return coarse_prob, expanded


# %% [markdown]
# ## 4. Segment-then-segment inference and the comparison
#
# `SegmentThenSegmentInferer(coarse_size, fine_size, margin)` runs the whole chain. All boxes are cropped and
# resized in one batched call (`CropResizeBoxes`), the fine net runs on batches of crops, and the crop
# probabilities are resized back into their boxes and fused with `max`. `coarse_mask` is the baseline: the
# coarse probabilities upsampled to full resolution. `segmentation_scores` gives DSC, IoU, precision and recall.


# %%
def compare(item: dict, coarse_net: torch.nn.Module, fine_net: torch.nn.Module) -> dict:
    """Masks, boxes and scores of segment-then-segment and of the coarse net alone on one image."""
    image = torch.as_tensor(item["image"])
    label = torch.as_tensor(item["label"])[None]
    inferer = SegmentThenSegmentInferer(coarse_size=COARSE, fine_size=FINE, margin=MARGIN, min_size=5)
    coarse_prob, boxes = coarse_boxes(inferer, image, coarse_net)
    sts_mask, inferer_boxes = inferer(image[None], coarse_net, fine_net, return_boxes=True)
    coarse_only = inferer.coarse_mask(image[None], coarse_net)
    scores = {
        "coarse_only": {k: float(v[0]) for k, v in segmentation_scores(coarse_only, label).items()},
        "segment_then_segment": {k: float(v[0]) for k, v in segmentation_scores(sts_mask, label).items()},
    }
    # what the fine net saw and said, for the figure: the crops (one batched call) and its probabilities
    crops = CropResizeBoxes((FINE, FINE))(image, boxes) if len(boxes) else torch.zeros(0, 1, FINE, FINE)
    fine_probs = inferer.fine_probabilities(image, boxes, fine_net) if len(boxes) else torch.zeros(0, 1, FINE, FINE)
    return {
        "coarse_prob": coarse_prob, "boxes": boxes, "inferer_boxes": inferer_boxes[0].numpy(),
        "sts_mask": sts_mask[0, 0], "coarse_mask": coarse_only[0, 0], "crops": crops, "fine_probs": fine_probs,
        "scores": scores,
    }


# %% [markdown]
# ## 5. Figure


# %%
def save_figure(item: dict, result: dict, path: Path) -> None:
    """Test image with the boxes, coarse probabilities, coarse-only and segment-then-segment masks, a few crops."""
    image, label = item["image"][0], item["label"][0]
    fig = plt.figure(figsize=(16, 7.5))
    grid = fig.add_gridspec(2, 8)
    ax = fig.add_subplot(grid[0, 0:2])
    ax.imshow(image, cmap="gray")
    for r0, c0, r1, c1 in result["boxes"]:
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="yellow", lw=0.8))
    ax.set_title(f"{len(result['boxes'])} boxes (ExpandBoxes)")
    panels = [
        (result["coarse_prob"][0].numpy(), f"coarse probability ({COARSE} px)"),
        (label, "ground truth"),
        (result["coarse_mask"].numpy(), "coarse only, DSC {:.3f}".format(result["scores"]["coarse_only"]["dice"])),
    ]
    for i, (img, title) in enumerate(panels):
        ax = fig.add_subplot(grid[0, 2 * (i + 1) : 2 * (i + 2)])
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title)
    ax = fig.add_subplot(grid[1, 0:2])
    ax.imshow(result["sts_mask"].numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title("segment-then-segment, DSC {:.3f}".format(result["scores"]["segment_then_segment"]["dice"]))
    ax = fig.add_subplot(grid[1, 2:4])
    diff = np.zeros((*label.shape, 3))
    diff[..., 1] = (result["sts_mask"].numpy() > 0) & (result["coarse_mask"].numpy() == 0)  # found only by STS
    diff[..., 0] = (result["coarse_mask"].numpy() > 0) & (result["sts_mask"].numpy() == 0)  # only coarse
    ax.imshow(diff)
    ax.set_title("green: only STS, red: only coarse")
    # the four boxes closest to the image centre (edge boxes are often cut off)
    centres = (result["boxes"][:, :2] + result["boxes"][:, 2:]) / 2.0
    order = np.argsort(np.linalg.norm(centres - np.array(label.shape) / 2.0, axis=1))
    for j, k in enumerate(order[:4]):
        ax = fig.add_subplot(grid[1, 4 + j])
        ax.imshow(result["crops"][k, 0].numpy(), cmap="gray")
        ax.contour(result["fine_probs"][k, 0].numpy(), levels=[0.5], colors="lime", linewidths=1)
        ax.set_title(f"crop {k} + fine mask", fontsize=9)
    for a in fig.axes:
        a.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


# %% [markdown]
# ## 6. Everything together
#
# `--quick` trains each net for 4 epochs of 80 samples (40 steps of 8); the default, 10 epochs of 120 (150 steps).


# %%
def main(output_dir: str | Path = "./outputs/tutorials/02_segment_then_segment", quick: bool = False) -> dict:
    """Run the tutorial; write ``segment_then_segment.png`` and ``results.json`` into ``output_dir``.

    Returns:
        a dict with the scores of both methods, the boxes (by hand and from the inferer), the masks, the test
        item and the written files.
    """
    torch.set_num_threads(1)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    epochs, samples = (4, 80) if quick else (10, 120)
    train_item, val, test = load_data()
    coarse_net, fine_net, history = train_both(train_item, val, out / "models", epochs, samples)
    for stage in ("coarse", "fine"):
        h = history[stage]
        print(f"{stage}: Dice loss {h['loss'][0]:.3f} -> {h['loss'][-1]:.3f}, best validation DSC "
              f"{h['best_val_dice']:.3f} (epoch {h['best_epoch']})")
    result = compare(test, coarse_net, fine_net)
    files = {"figure": out / "segment_then_segment.png", "json": out / "results.json"}
    save_figure(test, result, files["figure"])
    summary = {"num_boxes": int(len(result["boxes"])), **result["scores"]}
    files["json"].write_text(json.dumps(summary, indent=2))
    for method, s in result["scores"].items():
        print(f"{method:>22s}: DSC {s['dice']:.3f}  IoU {s['iou']:.3f}  precision {s['precision']:.3f}  "
              f"recall {s['recall']:.3f}")
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    return {**summary, **result, "test": test, "files": files, "history": history}


# %%
if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Segment-then-segment tutorial")
    parser.add_argument("--output_dir", default="./outputs/tutorials/02_segment_then_segment")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("MONAI_FOVEA_QUICK") == "1",
                        help="short training (the test's setting); default from MONAI_FOVEA_QUICK=1")
    args, _ = parser.parse_known_args()  # tolerate a notebook kernel's own arguments
    result = main(args.output_dir, args.quick)
    if "ipykernel" in sys.modules:  # in a notebook: show the figures the tutorial wrote
        from IPython.display import Image, display

        for png in sorted(Path(args.output_dir).glob("*.png")):
            display(Image(filename=str(png)))
