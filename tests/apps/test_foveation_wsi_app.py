"""The foveation_wsi_segmentation bundle's app: stain-rule labels, IoU helper, dense wrapper, one step of the training
recipe, the evaluation's postprocessing and report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_fovea.apps.foveation_wsi import (
    DenseFoveated,
    build_network,
    stain_rule_labels,
)
from monai_fovea.metrics import iou_per_class

GLASS, EOSIN, HAEM = (242, 242, 242), (232, 150, 205), (75, 40, 125)


def _he_image() -> tuple[np.ndarray, np.ndarray]:
    """Glass with an eosin-pink block holding a haematoxylin-purple block, and the labels the rule must give."""
    img = np.empty((96, 128, 3), np.uint8)
    img[:] = GLASS
    img[16:80, 24:112] = EOSIN
    img[32:64, 48:80] = HAEM
    expected = np.zeros((96, 128), np.uint8)
    expected[16:80, 24:112] = 1
    expected[32:64, 48:80] = 2
    return img, expected


def test_stain_rule_labels_glass_tissue_nuclei():
    """A block too small for an epithelium region: glass, tissue and nuclei only."""
    img, expected = _he_image()
    labels = stain_rule_labels(img)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2}
    # the binary openings round the blocks' corners only (diamond structuring element): everything else is exact
    corner_free = np.ones_like(expected, bool)
    for r, c in [(16, 24), (16, 111), (79, 24), (79, 111), (32, 48), (32, 79), (63, 48), (63, 79)]:
        corner_free[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3] = False
    np.testing.assert_array_equal(labels[corner_free], expected[corner_free])
    with pytest.raises(ValueError, match="rgb"):
        stain_rule_labels(img[..., 0])


def test_epithelium_is_a_region_of_dense_nuclei_that_needs_context():
    """Eosin tissue with 4-px nuclei every 8 px on the left, every 48 px on the right: the left becomes epithelium.
    Pink pixels far from any nucleus are identical on both sides; only their neighbourhood decides their class."""
    img = np.empty((320, 640, 3), np.uint8)
    img[:] = GLASS
    img[20:300, 20:620] = EOSIN
    for r in range(40, 280, 8):
        for c in range(40, 300, 8):
            img[r : r + 4, c : c + 4] = HAEM
    for r in range(40, 280, 48):
        for c in range(360, 600, 48):
            img[r : r + 4, c : c + 4] = HAEM
    img[150:156, 150:156] = GLASS  # a small gap between the cells of the dense region
    labels = stain_rule_labels(img)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert (labels[150:156, 150:156] == 3).all() and (labels[:10] == 0).all()  # the gap is region, the rim glass
    inner_left, inner_right = labels[60:260, 60:280], labels[60:260, 380:580]
    # inside the region its nuclei are epithelium too; outside, the same dark squares are nuclei
    assert set(np.unique(inner_left)) == {3}
    assert set(np.unique(inner_right)) == {1, 2}
    assert labels[41, 41] == 3 and labels[41 + 48 * 2, 361 + 48] == 2
    assert (img[41, 41] == img[41 + 48 * 2, 361 + 48]).all()
    # the same pink pixel (between nuclei) is epithelium on the left, tissue on the right
    assert labels[46, 46] == 3 and labels[46 + 48 * 2 + 4, 360 + 48 + 20] == 1
    assert (img[46, 46] == img[46 + 48 * 2 + 4, 360 + 48 + 20]).all()
    without = stain_rule_labels(img, epithelium=False)
    np.testing.assert_array_equal(without == 2, (labels == 2) | ((labels == 3) & (without == 2)))
    assert (without[60:260, 60:280] == 2).any()


def test_evaluation_iou_per_class_hand_computed():
    pred = np.array([[0, 1], [1, 2]])
    target = np.array([[0, 1], [2, 2]])
    # class 0: 1/1; class 1: |{(0,1)}| / |{(0,1),(1,0)}| = 1/2; class 2: |{(1,1)}| / |{(1,0),(1,1)}| = 1/2
    # evaluate() scores one slide as a one-image dataset
    assert iou_per_class(pred[None], target[None], 3).tolist() == pytest.approx([1.0, 0.5, 0.5])


def test_dense_wrapper_gives_probabilities():
    dense = DenseFoveated(build_network().eval(), sw_batch_size=4)
    out = dense(torch.rand(1, 3, 128, 64))
    assert out.shape == (1, 4, 128, 64)  # background, tissue, nuclei, epithelium
    torch.testing.assert_close(out.sum(1), torch.ones(1, 128, 64))


def test_one_step_of_the_recipe_updates_head_and_backbone():
    """One step of the bundle's recipe (train.json through train_foveation) on the bundle's network."""
    from monai_fovea.apps.foveation import train_foveation

    img, expected = _he_image()
    item = {"image": torch.from_numpy(np.tile(img, (2, 2, 1)).transpose(2, 0, 1).copy()).float() / 255,
            "label": torch.from_numpy(np.tile(expected, (2, 2)).astype(np.int64))[None]}
    torch.manual_seed(3)
    net = build_network()
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    history = train_foveation(net, [item], num_iterations=1, lr=2e-3, ignore_index=-100, progress=False, seed=3)
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])
    trained = net.state_dict()
    changed = {k for k in initial if initial[k].is_floating_point() and not torch.equal(initial[k], trained[k])}
    # one Adam step moves each parameter by about its learning rate at most: lr 2e-3 for the backbone, 10x that for
    # the head (the recipe's head_lr_scale)
    params = dict(net.named_parameters()).keys()
    step = {k: (trained[k] - initial[k]).abs().max().item() for k in params}
    assert max(v for k, v in step.items() if not k.startswith("head.")) <= 2.5e-3
    assert 2.5e-3 < max(v for k, v in step.items() if k.startswith("head.")) <= 2.5e-2
    assert any(k.startswith("head.") and k.endswith("weight") for k in changed)
    assert any(k.startswith("backbone.") and k.endswith("weight") for k in changed)


def test_read_label_rows_and_segmentation_report(tmp_path):
    """Evaluation postprocessing and report: rows of the written label map against the truth, hand-computed IoU."""
    import json
    from types import SimpleNamespace

    import tifffile

    from monai_fovea.apps.foveation_wsi import ReadLabelRowsd, SegmentationReport

    label_map = np.zeros((6, 4), np.uint8)
    label_map[3:, :2] = 1  # rows 3..5: [[1, 1, 0, 0]] * 3
    tifffile.imwrite(tmp_path / "s_label.tif", label_map)
    truth = torch.zeros(1, 3, 4, dtype=torch.int64)
    truth[0, :, 0] = 1  # class 1 in column 0 only
    d = ReadLabelRowsd("pred")({"pred": {"label": str(tmp_path / "s_label.tif")}, "rows": [3, 6], "truth": truth,
                                "label": None})
    assert d["pred"].tolist() == [[[1, 1, 0, 0]] * 3] and d["label"] is truth
    report = SegmentationReport(tmp_path, ("bg", "fg"), inferer=SimpleNamespace(last_stats={"predicted": 2}))
    engine = SimpleNamespace(state=SimpleNamespace(metrics={}, batch=[{"rows": [3, 6]}], output=[d]))
    report._collect(engine)
    report._write(engine)
    m = json.loads((tmp_path / "metrics.json").read_text())
    # bg: pred 6 px, truth 9 px, both 6 -> 6/9; fg: pred 6, truth 3, both 3 -> 3/6
    assert m["iou"] == pytest.approx({"bg": 6 / 9, "fg": 0.5})
    assert m["mean_iou"] == pytest.approx((6 / 9 + 0.5) / 2) and m["mean_iou_fg"] == pytest.approx(0.5)
    assert m["pixel_accuracy"] == pytest.approx(9 / 12) and m["test_rows"] == [3, 6]
    assert m["inference"] == {"predicted": 2} and engine.state.metrics["mean_iou"] == m["mean_iou"]
