"""The per-location oracle over fixed-scale models and the prior's scale targets, on a case computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from monai_fovea.apps.foveation import evaluate_foveation
from monai_fovea.apps.foveation_oracle import (
    add_scale_targets,
    fixed_scale_models,
    location_losses,
    oracle_evaluate,
    scale_target_map,
    scale_targets,
)
from monai_fovea.networks import FoveatedSegmenter


class _Const(nn.Module):
    """Predicts class ``k`` everywhere (logit 10)."""

    def __init__(self, k: int, num_classes: int = 2) -> None:
        super().__init__()
        self.k, self.num_classes = k, num_classes
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = torch.zeros((x.shape[0], self.num_classes, *x.shape[2:])) + self.bias
        out[:, self.k] += 10.0
        return out


def _fixed(k: int, index: int) -> FoveatedSegmenter:
    return FoveatedSegmenter(_Const(k), [8, 16], 8, spatial_dims=2, in_channels=1, mode="fixed", fixed_index=index)


def _case():
    """Left half class 1, right half class 0; model 0 says 1 everywhere, model 1 says 0 everywhere."""
    lab = np.zeros((1, 32, 32), np.int64)
    lab[:, :, :16] = 1
    return [{"image": np.random.default_rng(0).random((1, 32, 32), dtype=np.float32), "label": lab}], [_fixed(1, 0),
                                                                                                      _fixed(0, 1)]


def test_oracle_takes_the_best_model_per_tile():
    data, models = _case()
    res = oracle_evaluate(models, data, num_classes=2)
    assert res["iou"] == [1.0, 1.0] and res["mean_iou"] == 1.0
    assert res["chosen"] == [0.5, 0.5]
    # each model alone: one class right on half the image -> IoU 0.5 for it, 0 for the other
    assert res["per_model_mean_iou"] == [0.25, 0.25]
    assert res["per_model_mean_iou"] == [evaluate_foveation(m, data, 2)["mean_iou"] for m in models]


def test_per_model_scores_agree_with_the_inferer_on_trained_like_models():
    torch.manual_seed(0)
    models = []
    for d in range(2):
        bb = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
        models.append(FoveatedSegmenter(bb, [8, 16], 8, 2, in_channels=1, mode="fixed", fixed_index=d).eval())
    rng = np.random.default_rng(1)
    data = [{"image": rng.random((1, 40, 24), dtype=np.float32), "label": rng.integers(0, 3, (1, 40, 24))}]
    res = oracle_evaluate(models, data, num_classes=3)
    assert res["per_model_mean_iou"] == pytest.approx([evaluate_foveation(m, data, 3)["mean_iou"] for m in models])


def test_scale_target_map_marks_the_better_model_per_cell_and_no_preference():
    data, models = _case()
    img, lab = torch.as_tensor(data[0]["image"]), torch.as_tensor(data[0]["label"])
    smap = scale_target_map(models, img, lab, margin=0.05)
    assert smap.shape == (1, 32, 32) and smap.dtype == torch.int8
    assert smap[0, :, :16].unique().tolist() == [0] and smap[0, :, 16:].unique().tolist() == [1]
    # a margin above the loss difference (10 nats): no preference anywhere
    assert scale_target_map(models, img, lab, margin=20.0).unique().tolist() == [-1]
    # a location whose region has no labelled pixel: no preference
    unl = lab.clone()
    unl[:, :8, :8] = -100
    assert scale_target_map(models, img, unl)[0, :8, :8].unique().tolist() == [-1]
    items = add_scale_targets(data, models)
    assert "scale_target" not in data[0] and torch.equal(items[0]["scale_target"], smap)


def test_location_losses_by_hand():
    data, models = _case()
    losses, logits = location_losses(models, torch.as_tensor(data[0]["image"]), torch.as_tensor(data[0]["label"]),
                                     torch.tensor([[4, 4], [4, 28]]))
    wrong = float(torch.log1p(torch.exp(torch.tensor(10.0))))  # CE of logit 0 for the truth against 10
    right = float(torch.log1p(torch.exp(torch.tensor(-10.0))))
    torch.testing.assert_close(losses, torch.tensor([[right, wrong], [wrong, right]]))
    assert logits.shape == (2, 2, 2, 8, 8)
    assert scale_targets(losses).tolist() == [0, 1]


def test_fixed_scale_models_load_one_checkpoint_per_scale(tmp_path):
    torch.manual_seed(0)
    net = FoveatedSegmenter(None, [8, 16], 8, 2, in_channels=1, num_classes=2)
    paths = []
    for d in range(2):
        other = FoveatedSegmenter(None, [8, 16], 8, 2, in_channels=1, num_classes=2)
        torch.save({"model": other.state_dict()}, tmp_path / f"fixed{d}.pt")
        paths.append(tmp_path / f"fixed{d}.pt")
    models = fixed_scale_models(net, paths)
    assert [m.mode for m in models] == ["fixed", "fixed"] and [m.fixed_index for m in models] == [0, 1]
    for m, p in zip(models, paths):
        for k, v in torch.load(p, weights_only=True)["model"].items():
            assert torch.equal(m.state_dict()[k], v)
    assert net.mode == "soft"  # copies: the network itself is untouched
    with pytest.raises(ValueError, match="one checkpoint per scale"):
        fixed_scale_models(net, paths[:1])
    with pytest.raises(ValueError, match="mode 'fixed'"):
        oracle_evaluate([net, models[1]], [], 2)
