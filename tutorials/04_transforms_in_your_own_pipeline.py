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
# # Tutorial 4: the transforms in your own MONAI pipeline
#
# Each strategy of monai_fovea ships ordinary MONAI dictionary transforms. They take and return dicts, keep
# MetaTensor metadata and work channel-first in 2D and 3D, so they slot into a `Compose` after `LoadImaged` and
# `EnsureChannelFirstd` and run inside a MONAI `Dataset` / `DataLoader` like any other transform. This tutorial is
# the shortest useful pipeline for each strategy, on real sample files, printing what comes out:
#
# | strategy | transforms | sample | one item becomes |
# |---|---|---|---|
# | foveation | `RandFoveationCentersd` + `MultiScalePatchesd` | `cellseg_he` (PNG + TIFF) | `[N, D, C, h, w]` patches |
# | segment-then-segment | `ComponentBoxesd` + `ExpandBoxesd` + `CropResizeBoxesd` | `dsb2018_nuclei` | `[K, C, h, w]` |
# | sparse | `EdgeShelld` + `ToSparsed` | `ct_head` bone mask (NIfTI) | a `SparseVolume` (coordinates + features) |
#
# No training here; tutorials 1 to 3 show what the networks do with these outputs.

# %%
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write PNGs; no display needed
import matplotlib.pyplot as plt
import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    ScaleIntensityd,
    ScaleIntensityRangePercentilesd,
)

from monai_fovea.data import samples
from monai_fovea.data.readers import TiffFileReader
from monai_fovea.data.sparse_volume import SparseVolume, collate_sparse
from monai_fovea.transforms import (
    ComponentBoxesd,
    CropResizeBoxesd,
    EdgeShelld,
    ExpandBoxesd,
    MultiScalePatchesd,
    RandFoveationCentersd,
    ToSparsed,
)

# %% [markdown]
# ## 1. Foveation: multi-scale patches at random locations
#
# `RandFoveationCentersd` draws `num_centers` locations of a grid with pitch `stride` (the paper draws 16 per image
# and step). With `balanced=True` it first picks a class present in the label map at random, then a location of that
# class, so rare classes are seen. `MultiScalePatchesd` cuts D concentric patches around each location from every
# listed key. The image is resampled bilinearly and antialiased; the label uses nearest neighbour and no
# antialiasing, and is padded with 255 (an "ignore" value) outside the image.

# %%
FOV_PATCH_SIZES = (32, 64, 128)
FOV_OUTPUT = 32
NUM_CENTERS = 8


def foveation_pipeline(seed: int = 0) -> Compose:
    """H&E image + type map → ``{"image": [N, D, 3, 32, 32], "label": [N, D, 1, 32, 32], "centers": [N, 2]}``."""
    pipeline = Compose([
        # the H&E image is a PNG (PIL; reverse_indexing=False keeps the (row, col) order of the arrays), the type
        # map a TIFF (TiffFileReader: its own dtype, (row, col) order, µm/px when the file has one)
        LoadImaged("image", reader="PILReader", reverse_indexing=False, image_only=True),
        LoadImaged("label", reader=TiffFileReader, image_only=True),
        EnsureChannelFirstd(["image", "label"]),
        ScaleIntensityd("image"),  # 0-255 → 0-1
        RandFoveationCentersd("image", stride=32, num_centers=NUM_CENTERS, label_key="label", balanced=True),
        MultiScalePatchesd(("image", "label"), "centers", FOV_PATCH_SIZES, FOV_OUTPUT,
                           mode=("bilinear", "nearest"), antialias=(True, False),
                           padding_mode=("zeros", "constant"), value=(0, 255)),
    ])
    pipeline.set_random_state(seed=seed)
    return pipeline


def run_foveation(seed: int = 0) -> dict:
    files = samples.fetch("cellseg_he")
    items = [{"image": str(files[f"image{i}"]), "label": str(files[f"type{i}"])} for i in (1, 2, 3)]
    loader = DataLoader(Dataset(items, foveation_pipeline(seed)), batch_size=1, num_workers=0)
    batch = next(iter(loader))
    print(f"foveation: image {tuple(batch['image'].shape)} = [B, N, D, C, h, w], label {tuple(batch['label'].shape)}, "
          f"centers {tuple(batch['centers'].shape)}")
    return {"batch": batch, "items": items}


# %% [markdown]
# ## 2. Segment-then-segment: one crop per object
#
# `ComponentBoxesd` writes one box per connected component of the mask to `label_boxes`, as `[K, 4]`
# (`row0, col0, row1, col1`, end exclusive). The instance map has one id per nucleus and boxes are computed per
# class, so touching nuclei still get a box each. `ExpandBoxesd` makes them square and pads them by 4 px inside the
# image, and `CropResizeBoxesd` crops the image and the label at every box and resizes the crops to 32 x 32 in one
# batched call. These are the fine network's training inputs; at inference the boxes come from the coarse
# network instead of the label.

# %%
BOX_OUTPUT = (32, 32)
BOX_MARGIN = 4
BOX_MIN_SIZE = 5


def boxes_pipeline() -> Compose:
    """Nuclei image + instance mask → ``{"image": [K, 1, 32, 32], "label": [K, 1, 32, 32],
    "label_boxes": [K, 4]}``."""
    return Compose([
        LoadImaged(["image", "label"], reader=TiffFileReader, image_only=True),  # both TIFF
        EnsureChannelFirstd(["image", "label"]),
        EnsureTyped(["image", "label"], dtype=torch.float32),
        ScaleIntensityRangePercentilesd("image", 1, 99.8, 0.0, 1.0, clip=True),
        ComponentBoxesd("label", min_size=BOX_MIN_SIZE),
        ExpandBoxesd("label_boxes", image_key="image", margin=BOX_MARGIN, square=True),
        CropResizeBoxesd(["image", "label"], box_key="label_boxes", output_size=BOX_OUTPUT,
                         mode=("bilinear", "nearest")),
        AsDiscreted("label", threshold=0.5),  # instance ids → foreground mask for the fine net
    ])


def run_boxes() -> dict:
    files = samples.fetch("dsb2018_nuclei")
    item = {"image": str(files["image"]), "label": str(files["label"])}
    # K differs between images: batch_size=1 (or a list collate) keeps the crops of one image together
    loader = DataLoader(Dataset([item], boxes_pipeline()), batch_size=1, num_workers=0)
    batch = next(iter(loader))
    print(f"segment-then-segment: {batch['label_boxes'].shape[1]} boxes, crops {tuple(batch['image'].shape)} = "
          f"[B, K, C, h, w], label crops {tuple(batch['label'].shape)}")
    return {"batch": batch, "item": item}


# %% [markdown]
# ## 3. Sparse: a shell volume as active voxels
#
# `EdgeShelld` keeps the one-voxel surface of the bone mask, and `ToSparsed` replaces the dense array with a
# `SparseVolume`: int32 coordinates `[M, 4]` (batch index first), features `[M, 1]`, the spatial shape and the
# affine. The default collate cannot stack sparse volumes of different sizes. `collate_sparse` concatenates them
# and sets the batch index, which is the layout a spconv network takes (`batch["bone"].to_spconv()`).


# %%
def sparse_pipeline() -> Compose:
    """Bone mask NIfTI → ``{"bone": SparseVolume}`` of its edge shell."""
    return Compose([
        LoadImaged("bone", image_only=True),
        EnsureChannelFirstd("bone"),
        EdgeShelld("bone"),
        ToSparsed("bone", features="ones"),
    ])


def run_sparse(copies: int = 2) -> dict:
    item = {"bone": str(samples.fetch("ct_head")["bone"])}
    loader = DataLoader(Dataset([item] * copies, sparse_pipeline()), batch_size=copies, num_workers=0,
                        collate_fn=collate_sparse)
    batch = next(iter(loader))
    vol: SparseVolume = batch["bone"]
    per_volume = vol.num_active // copies
    fraction = per_volume / float(np.prod(vol.spatial_shape))
    print(f"sparse: batch of {vol.batch_size} volumes {vol.spatial_shape}: coords {tuple(vol.coords.shape)}, "
          f"features {tuple(vol.features.shape)}; {per_volume} active voxels each = {100 * fraction:.2f} %")
    return {"batch": batch, "item": item, "fraction": fraction}


# %% [markdown]
# ## 4. A figure of what came out


# %%
def save_figure(fov: dict, boxes: dict, path: Path) -> None:
    """Row 1: the D patches of one location (image and label); row 2: a few nucleus crops and their masks."""
    img, lab = fov["batch"]["image"][0], fov["batch"]["label"][0]
    d = len(FOV_PATCH_SIZES)
    fig, axes = plt.subplots(2, 2 * d, figsize=(2.2 * 2 * d, 4.8))
    for i in range(d):
        axes[0, 2 * i].imshow(img[0, i].permute(1, 2, 0).clamp(0, 1).numpy())
        axes[0, 2 * i].set_title(f"FoV {FOV_PATCH_SIZES[i]} px", fontsize=9)
        shown = lab[0, i, 0].numpy().astype(float)
        shown[shown == 255] = np.nan  # padding outside the image
        axes[0, 2 * i + 1].imshow(shown, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        axes[0, 2 * i + 1].set_title("type map", fontsize=9)
    crops, masks = boxes["batch"]["image"][0], boxes["batch"]["label"][0]
    for j in range(d):
        axes[1, 2 * j].imshow(crops[j, 0].numpy(), cmap="gray")
        axes[1, 2 * j].set_title(f"nucleus crop {j}", fontsize=9)
        axes[1, 2 * j + 1].imshow(masks[j, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[1, 2 * j + 1].set_title("its mask", fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# %%
def main(
    output_dir: str | Path = "./outputs/tutorials/04_transforms_in_your_own_pipeline", quick: bool = False
) -> dict:
    """Run the three pipelines; write ``pipelines.png`` and ``results.json`` (the shapes) into ``output_dir``.

    ``quick`` batches one sparse volume instead of two (the rest is already fast).
    """
    torch.set_num_threads(1)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fov = run_foveation()
    boxes = run_boxes()
    sparse = run_sparse(copies=1 if quick else 2)
    files = {"figure": out / "pipelines.png", "json": out / "results.json"}
    save_figure(fov, boxes, files["figure"])
    summary = {
        "foveation_image_shape": list(fov["batch"]["image"].shape),
        "foveation_label_shape": list(fov["batch"]["label"].shape),
        "foveation_centers_shape": list(fov["batch"]["centers"].shape),
        "num_boxes": int(boxes["batch"]["label_boxes"].shape[1]),
        "crops_shape": list(boxes["batch"]["image"].shape),
        "sparse_coords_shape": list(sparse["batch"]["bone"].coords.shape),
        "sparse_batch_size": int(sparse["batch"]["bone"].batch_size),
        "sparse_active_fraction": sparse["fraction"],
    }
    files["json"].write_text(json.dumps(summary, indent=2))
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    return {**summary, "foveation": fov, "boxes": boxes, "sparse": sparse, "files": files}


# %%
if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="monai_fovea transforms in a plain MONAI pipeline")
    parser.add_argument("--output_dir", default="./outputs/tutorials/04_transforms_in_your_own_pipeline")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("MONAI_FOVEA_QUICK") == "1",
                        help="one sparse volume per batch instead of two; default from MONAI_FOVEA_QUICK=1")
    args, _ = parser.parse_known_args()  # tolerate a notebook kernel's own arguments
    result = main(args.output_dir, args.quick)
    if "ipykernel" in sys.modules:  # in a notebook: show the figures the tutorial wrote
        from IPython.display import Image, display

        for png in sorted(Path(args.output_dir).glob("*.png")):
            display(Image(filename=str(png)))
