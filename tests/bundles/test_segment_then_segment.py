"""The segment_then_segment bundle: metadata, network I/O, inference as a user runs it, training (plain and DDP
with gloo on CPU), evaluation."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from monai_fovea.apps.segment_then_segment import build_unet, normalize_intensity
from monai_fovea.data.synthetic import small_objects
from monai_fovea.inferers import SegmentThenSegmentInferer

NAME = "segment_then_segment"
BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / NAME
FEATURES = (8, 16, 32, 64, 128, 8)

pytestmark = pytest.mark.slow


def test_metadata_is_valid(meta_schema):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(meta_schema))


def test_network_in_out():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(BUNDLE / "configs" / "metadata.json"),
                      config_file=str(BUNDLE / "configs" / "inference.json"), device="cpu", n=2)
    # models/model.pt is a plain state dict of network_def; models/coarse.pt of coarse_def
    for name in ("model.pt", "coarse.pt"):
        build_unet(2, 1, FEATURES).load_state_dict(torch.load(BUNDLE / "models" / name, weights_only=True))
        assert (BUNDLE / "models" / name).stat().st_size < 5 * 2**20


def _expected_mask(image: np.ndarray) -> np.ndarray:
    """The same pipeline in-process with the bundle's weights and settings (coarse 4x down, fine 64)."""
    coarse, fine = build_unet(2, 1, FEATURES), build_unet(2, 1, FEATURES)
    coarse.load_state_dict(torch.load(BUNDLE / "models" / "coarse.pt", weights_only=True))
    fine.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", weights_only=True))
    inferer = SegmentThenSegmentInferer(coarse_size=None, coarse_scale=4, fine_size=64, sw_batch_size=32)
    x = torch.as_tensor(normalize_intensity(image.astype(np.float32)[None]))[None]
    return (inferer(x, coarse.eval(), fine.eval())[0, 0].numpy() > 0).astype(np.uint8) * 255


def test_inference_tiff_and_png(tmp_path, run_bundle):
    img, _ = small_objects((160, 128), num_objects=10, radius=(4.0, 7.0), seed=7)
    img16 = (np.clip(img[0], 0, 1) * 200).astype(np.uint16)
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "cells.tif", img16)
    Image.fromarray((img16 // 1).astype(np.uint8)).save(src / "cells2.png")
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()}
    out = tmp_path / "out"
    run_bundle(NAME, "inference.json", input=str(src), output_dir=str(out), device="cpu")
    mask = tifffile.imread(out / "cells_mask.tif")
    assert mask.shape == (160, 128) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask, _expected_mask(img16))
    png = np.asarray(Image.open(out / "cells2_mask.png"))
    assert png.shape == (160, 128) and np.array_equal(png, _expected_mask(img16.astype(np.uint8)))
    boxes = json.loads((out / "cells_boxes.json").read_text())["boxes"]
    assert all(b[2] - b[0] == b[3] - b[1] and 0 <= b[0] and b[2] <= 160 and b[3] <= 128 for b in boxes)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()} == digest  # input untouched


def test_inference_default_sample_input(tmp_path, run_bundle):
    run_bundle(NAME, "inference.json", output_dir=str(tmp_path))
    mask = tifffile.imread(tmp_path / "img2d_mask.tif")
    assert mask.shape == (512, 512) and 0.05 < (mask > 0).mean() < 0.5  # the sample is 20 % nuclei


def _run(args, tmp_path, **env):
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=BUNDLE.parents[1],
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_inference_failure_leaves_no_output(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    proc = _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
                 "--bundle_root", str(BUNDLE), "--input", str(bad), "--output_dir", str(out)], tmp_path)
    assert proc.returncode != 0
    assert not out.exists() or list(out.iterdir()) == []


def test_train_and_evaluate_tiny(tmp_path, run_bundle):
    models = tmp_path / "models"
    run_bundle(NAME, "train.json", model_dir=str(models), coarse_epochs=1, fine_epochs=2, samples_per_epoch=8)
    history = json.loads((models / "train_history.json").read_text())
    assert len(history["coarse"]["loss"]) == 1 and len(history["fine"]["val_dice"]) == 2
    run_bundle(NAME, "evaluate.json", model_dir=str(models), output_dir=str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"coarse", "sts"} and set(metrics["sts"]) == {"dice", "iou", "precision", "recall"}
    # evaluate.json on the validation part reproduces the best validation DSC that training kept
    run_bundle(NAME, "evaluate.json", model_dir=str(models), output_dir=str(tmp_path / "val"), part="'val'")
    val = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert val["sts"]["dice"] == pytest.approx(max(history["fine"]["val_dice"]), abs=1e-5)


def test_multi_gpu_train_gloo_cpu(tmp_path):
    models = tmp_path / "models"
    configs = f"['{BUNDLE / 'configs' / 'train.json'}','{BUNDLE / 'configs' / 'multi_gpu_train.json'}']"
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
                 "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(BUNDLE),
                 "--model_dir", str(models), "--coarse_epochs", "1", "--fine_epochs", "1", "--samples_per_epoch", "4",
                 "--batch_size", "2"], tmp_path, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    history = json.loads((models / "train_history.json").read_text())
    assert len(history["coarse"]["loss"]) == 1
    for name in ("model.pt", "coarse.pt"):
        build_unet(2, 1, FEATURES).load_state_dict(torch.load(models / name, weights_only=True))
