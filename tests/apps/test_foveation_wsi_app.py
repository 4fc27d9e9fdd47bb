"""The foveation_wsi_segmentation bundle's app: stain-rule labels, IoU helper, dense wrapper, one training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_fovea.apps.foveation_wsi import DenseFoveated, build_network, stain_rule_labels, train
from monai_fovea.metrics import iou_per_class
from monai_fovea.data.io import write_pyramidal_tiff

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


def test_evaluation_iou_per_class_hand_computed():
    pred = np.array([[0, 1], [1, 2]])
    target = np.array([[0, 1], [2, 2]])
    # class 0: 1/1; class 1: |{(0,1)}| / |{(0,1),(1,0)}| = 1/2; class 2: |{(1,1)}| / |{(1,0),(1,1)}| = 1/2
    # evaluate() scores one slide as a one-image dataset
    assert iou_per_class(pred[None], target[None], 3).tolist() == pytest.approx([1.0, 0.5, 0.5])


def test_dense_wrapper_gives_probabilities():
    dense = DenseFoveated(build_network().eval(), sw_batch_size=4)
    out = dense(torch.rand(1, 3, 128, 64))
    assert out.shape == (1, 3, 128, 64)
    torch.testing.assert_close(out.sum(1), torch.ones(1, 128, 64))


def test_one_training_step_updates_head_and_backbone(tmp_path):
    img, _ = _he_image()
    slide = tmp_path / "he.tif"
    write_pyramidal_tiff(np.tile(img, (2, 2, 1)), slide, mpp=0.5, tile=64, levels=2, compression="lzw")
    out = tmp_path / "model.pt"
    result = train(slide, out, epochs=1, batch_size=2, max_steps=1, train_stride=32, seed=3)
    assert result["steps"] == 1 and np.isfinite(result["loss"])
    torch.manual_seed(3)
    initial = build_network().state_dict()
    trained = torch.load(out, weights_only=True)
    assert trained.keys() == initial.keys()
    changed = {k for k in initial if initial[k].is_floating_point() and not torch.equal(initial[k], trained[k])}
    # one Adam step (lr 2e-3) moves each parameter by about lr at most: the same initialisation, one update
    params = dict(build_network().named_parameters()).keys()
    assert max((trained[k] - initial[k]).abs().max().item() for k in params) <= 2.5e-3
    assert any(k.startswith("head.") and k.endswith("weight") for k in changed)
    assert any(k.startswith("backbone.") and k.endswith("weight") for k in changed)
