"""Checks of what each tutorial promises, used by ``test_notebooks.py`` on the result of executing its notebook:
the figures are real PNGs, and the numbers it returns are right. Where a value can be computed independently (patch
shapes, exact crops, occupancy of the bone shell, box counts, metrics), the check computes it with other libraries
(openslide, tifffile, nibabel, scipy, numpy) and compares.

Each ``check_*`` takes the pair ``(result, output_dir)``: the dict the tutorial's ``main()`` returned and the folder it wrote.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = REPO_ROOT / "tutorials"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

def load_tutorial(stem: str) -> ModuleType:
    """Import ``tutorials/<stem>.py`` as a module (its name starts with a digit, so no plain import)."""
    path = TUTORIALS / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(f"tutorial_{stem}", path)
    assert spec is not None and spec.loader is not None, f"cannot import {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def assert_png(path: Path, min_bytes: int = 10_000, min_side: int = 200) -> None:
    """A real PNG: signature, decodable, large enough, not a blank canvas."""
    from PIL import Image

    assert path.is_file(), f"missing {path}"
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) >= min_bytes, f"{path} is only {len(data)} bytes"
    with Image.open(path) as img:
        img.load()
        pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert min(pixels.shape[:2]) >= min_side, f"{path} is {pixels.shape[:2]} px"
    assert pixels.std() > 10.0, f"{path} looks blank (std {pixels.std():.1f})"


def numpy_iou(pred: np.ndarray, label: np.ndarray, num_classes: int) -> list[float]:
    out = []
    for k in range(num_classes):
        union = np.logical_or(pred == k, label == k).sum()
        out.append(float(np.logical_and(pred == k, label == k).sum() / union) if union else float("nan"))
    return out


def numpy_dice_recall(pred: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    p, t = pred > 0.5, label > 0
    tp = np.logical_and(p, t).sum()
    return 2.0 * tp / (p.sum() + t.sum()), tp / t.sum()


def shell_of(mask: np.ndarray) -> np.ndarray:
    """Mask minus its erosion with face neighbours, voxels outside the array counting as background."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


# --- 01 foveation ------------------------------------------------------------------------------------------------
def check_foveation_files(foveation: tuple[dict, Path]) -> None:
    result, out = foveation
    assert_png(out / "patches.png")
    assert_png(out / "foveation_result.png")
    saved = json.loads((out / "results.json").read_text())
    assert saved["slide_patches_shape"] == [1, 3, 3, 256, 256]
    assert saved["mean_object_iou_foveated"] == pytest.approx(result["mean_object_iou_foveated"])


def check_foveation_slide_patches_are_pyramid_reads(foveation: tuple[dict, Path]) -> None:
    import openslide

    result, _ = foveation
    slide = result["slide"]
    patches = slide["patches"]
    assert tuple(patches.shape) == (1, 3, 3, 256, 256)  # [N, D, C, H, W]
    assert slide["levels"] == [0, 1, 2]  # FoV 256 / 512 / 1024 px → the 1x / 2x / 4x levels
    # the 256 px scale at level 0 is the plain crop starting at centre - 128
    row, col = slide["center"]
    with openslide.OpenSlide(slide["path"]) as osr:
        crop = np.asarray(osr.read_region((col - 128, row - 128), 0, (256, 256)).convert("RGB"))
    assert np.array_equal(patches[0, 0].permute(1, 2, 0).numpy(), crop.astype(np.float32))
    # wider scales are not the same pixels
    assert not torch.equal(patches[0, 0], patches[0, 2])


def check_foveation_synthetic_patches_and_maps(foveation: tuple[dict, Path]) -> None:
    module = sys.modules["tutorial_01_foveation"]
    result, _ = foveation
    test = result["test"]
    image = test["image"]
    # D patches of the blob centre: [N=1, D=3, C=1, 16, 16]; scale 0 (FoV = output size) is the exact crop
    assert tuple(result["synth_patches"].shape) == (1, len(module.PATCH_SIZES), 1, 16, 16)
    r, c = result["synth_center"][0].tolist()
    assert np.array_equal(result["synth_patches"][0, 0, 0].numpy(), image[0, r - 8 : r + 8, c - 8 : c + 8])
    # probabilities over 5 classes at full resolution
    probs = result["probs"]
    assert tuple(probs.shape) == (module.NUM_CLASSES, *image.shape[1:])
    assert torch.allclose(probs.sum(0), torch.ones(image.shape[1:]), atol=1e-5)
    # APSM: one value per 16 px cell, between the smallest and the largest FoV
    apsm = result["apsm"]
    assert tuple(apsm.shape) == (128 // 16, 128 // 16)
    assert float(apsm.min()) >= 16.0 - 1e-4 and float(apsm.max()) <= 64.0 + 1e-4
    # the reported IoUs are those of the prediction, recomputed here with numpy
    expected = numpy_iou(probs.argmax(0).numpy(), test["label"][0], module.NUM_CLASSES)
    np.testing.assert_allclose(result["iou_foveated"], expected, rtol=1e-6, equal_nan=True)
    assert result["mean_object_iou_foveated"] == pytest.approx(float(np.nanmean(expected[1:])))
    assert 0.0 <= result["mean_object_iou_fixed_16px"] <= 1.0
    # training reduced the loss (cross-entropy over 5 classes starts near ln 5 = 1.61)
    assert result["train_loss_last20"] < result["train_loss_first"]


# --- 02 segment-then-segment -------------------------------------------------------------------------------------
def check_segment_then_segment_files(segment_then_segment: tuple[dict, Path]) -> None:
    result, out = segment_then_segment
    assert_png(out / "segment_then_segment.png")
    saved = json.loads((out / "results.json").read_text())
    assert saved["num_boxes"] == len(result["boxes"])
    assert saved["segment_then_segment"]["dice"] == pytest.approx(result["segment_then_segment"]["dice"])


def check_segment_then_segment_boxes(segment_then_segment: tuple[dict, Path]) -> None:
    result, _ = segment_then_segment
    boxes = np.asarray(result["boxes"])
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0
    sides = boxes[:, 2:] - boxes[:, :2]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 256).all()  # inside the 256 x 256 test quadrant
    assert (sides >= 5).all()
    assert (sides[:, 0] == sides[:, 1]).all()  # squared (no box is as large as the image here)
    # the boxes built by hand with ComponentBoxes + ExpandBoxes are the inferer's boxes
    key = lambda b: sorted(map(tuple, np.asarray(b).tolist()))  # noqa: E731
    assert key(boxes) == key(result["inferer_boxes"])
    # one 32 px crop per box, and the fine net's foreground probability for each
    assert tuple(result["crops"].shape) == (len(boxes), 1, 32, 32)
    probs = result["fine_probs"]
    assert tuple(probs.shape) == (len(boxes), 1, 32, 32)
    assert float(probs.min()) >= 0.0 and float(probs.max()) <= 1.0


def check_segment_then_segment_scores(segment_then_segment: tuple[dict, Path]) -> None:
    result, _ = segment_then_segment
    label = result["test"]["label"][0]
    sts, coarse = result["sts_mask"].numpy(), result["coarse_mask"].numpy()
    assert sts.shape == coarse.shape == label.shape == (256, 256)
    # crops are pasted inside their boxes only
    covered = np.zeros_like(sts, dtype=bool)
    for r0, c0, r1, c1 in np.asarray(result["boxes"]):
        covered[r0:r1, c0:c1] = True
    assert not sts[~covered].any()
    for name, mask in (("segment_then_segment", sts), ("coarse_only", coarse)):
        dice, recall = numpy_dice_recall(mask, label)
        assert result[name]["dice"] == pytest.approx(dice, abs=1e-5)
        assert result[name]["recall"] == pytest.approx(recall, abs=1e-5)
        # nuclei are bright blobs on a dark background: even briefly trained nets find most of them
        assert dice > 0.5, f"{name} DSC {dice:.3f}"


# --- 03 sparse ---------------------------------------------------------------------------------------------------
def check_sparse_occupancy_is_the_bone_shell(sparse: tuple[dict, Path]) -> None:
    import nibabel as nib
    from scipy import ndimage

    from monai_fovea.data import samples

    result, out = sparse
    assert_png(out / "sparse_skull_completion.png")
    bone = np.asarray(nib.load(str(samples.fetch("ct_head")["bone"])).dataobj) > 0
    labels, _ = ndimage.label(bone, np.ones((3, 3, 3), bool))
    skull = labels == np.bincount(labels.ravel())[1:].argmax() + 1
    shell = shell_of(skull)
    assert result["skull_voxels"] == int(skull.sum())
    assert result["shell_voxels"] == int(shell.sum())
    assert result["volume_voxels"] == bone.size == 256 * 256 * 108
    assert result["occupancy"] == pytest.approx(shell.sum() / bone.size, rel=1e-12)
    assert np.array_equal(result["shell"][0].numpy() > 0, shell)
    # the SparseVolume: int32 [M, 1 + 3] coordinates with batch index 0, exactly the shell's voxels
    vol = result["sparse_shell"]
    assert vol.coords.dtype == torch.int32 and tuple(vol.coords.shape) == (int(shell.sum()), 4)
    assert (vol.coords[:, 0] == 0).all()
    assert np.array_equal(vol.coords[:, 1:].numpy(), np.argwhere(shell))
    saved = json.loads((out / "results.json").read_text())
    assert saved["occupancy"] == pytest.approx(result["occupancy"])


def check_sparse_defect_and_completion(sparse: tuple[dict, Path]) -> None:
    result, _ = sparse
    case = result["case"]
    skull = case["skull"][0].numpy() > 0
    defective, implant = case["defective"][0].numpy() > 0, case["implant"][0].numpy() > 0
    assert implant.sum() > 0 and not (defective & implant).any()
    assert np.array_equal(defective | implant, skull)
    # dense logits on the full grid with the input's affine; the predicted implant never overlaps the input
    logits = result["logits"]
    assert tuple(logits.shape) == (1, 256, 256, 108)
    assert torch.allclose(logits.affine.double(), case["skull"].affine.double())
    pred = result["implant_pred"]
    assert pred.shape == skull.shape and not (pred & defective).any()
    # DSC of the predicted implant, recomputed (1 only when both are empty; the implant is not)
    tp = (pred & implant).sum()
    assert result["dice"] == pytest.approx(2.0 * tp / (pred.sum() + implant.sum()), abs=1e-6)
    assert 0.0 <= result["border_dice"] <= 1.0
    assert math.isnan(result["hd95"]) or result["hd95"] >= 0.0
    assert len(result["train_losses"]) == 3 and all(math.isfinite(v) and v > 0 for v in result["train_losses"])


# --- 04 transforms in your own pipeline --------------------------------------------------------------------------
def check_pipeline_foveation(pipelines: tuple[dict, Path]) -> None:
    import tifffile

    module = sys.modules["tutorial_04_transforms_in_your_own_pipeline"]
    result, out = pipelines
    assert_png(out / "pipelines.png")
    batch = result["foveation"]["batch"]
    n, d = module.NUM_CENTERS, len(module.FOV_PATCH_SIZES)
    assert tuple(batch["image"].shape) == (1, n, d, 3, 32, 32)  # [B, N, D, C, h, w]
    assert tuple(batch["label"].shape) == (1, n, d, 1, 32, 32)
    centers = batch["centers"][0]
    assert tuple(centers.shape) == (n, 2)
    assert ((centers - 16) % 32 == 0).all()  # grid of stride 32, centres in the middle of the cells
    # scale 0 of the label (FoV = output size, nearest) is the type map's crop, read here with tifffile
    types = tifffile.imread(result["foveation"]["items"][0]["label"])
    padded = np.pad(types.astype(np.float32), 16, constant_values=255)
    for k, (r, c) in enumerate(centers.tolist()):
        expected = padded[r : r + 32, c : c + 32]  # (r - 16 + 16) in padded coordinates
        assert np.array_equal(batch["label"][0, k, 0, 0].numpy(), expected)
    saved = json.loads((out / "results.json").read_text())
    assert saved["foveation_image_shape"] == [1, n, d, 3, 32, 32]


def check_pipeline_boxes(pipelines: tuple[dict, Path]) -> None:
    import tifffile
    from scipy import ndimage

    module = sys.modules["tutorial_04_transforms_in_your_own_pipeline"]
    result, _ = pipelines
    instances = tifffile.imread(result["boxes"]["item"]["label"])
    # one box per connected piece (8-connected) of every nucleus id with >= min_size pixels
    expected = 0
    for i, sl in enumerate(ndimage.find_objects(instances), start=1):
        if sl is None:
            continue
        lab, num = ndimage.label(instances[sl] == i, np.ones((3, 3), bool))
        expected += int((np.bincount(lab.ravel())[1:] >= module.BOX_MIN_SIZE).sum())
    batch = result["boxes"]["batch"]
    assert result["num_boxes"] == expected and expected > 100  # the sample has 125 nuclei
    assert tuple(batch["image"].shape) == (1, expected, 1, 32, 32)
    assert tuple(batch["label_boxes"].shape) == (1, expected, 4)
    labels = batch["label"][0]
    assert set(torch.unique(labels).tolist()) == {0.0, 1.0}
    boxes = batch["label_boxes"][0]
    assert (boxes[:, 2] - boxes[:, 0] == boxes[:, 3] - boxes[:, 1]).all()  # squared by ExpandBoxesd


def check_pipeline_sparse(pipelines: tuple[dict, Path]) -> None:
    import nibabel as nib

    from monai_fovea.data import samples

    result, _ = pipelines
    vol = result["sparse"]["batch"]["bone"]
    bone = np.asarray(nib.load(str(samples.fetch("ct_head")["bone"])).dataobj) > 0
    count = int(shell_of(bone).sum())
    assert vol.batch_size == result["sparse_batch_size"] == 1  # quick mode batches one volume
    assert tuple(vol.coords.shape) == (count, 4) and tuple(vol.features.shape) == (count, 1)
    assert vol.spatial_shape == bone.shape
    assert result["sparse_active_fraction"] == pytest.approx(count / bone.size, rel=1e-12)
