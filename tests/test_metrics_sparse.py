"""Sparse-section metrics: implant DSC, border DSC and HD95 against hand-computed values."""

import math

import pytest
import torch

from monai_fovea.metrics import defect_border_region, implant_scores


def _line_case():
    # 1 x 1 x 1 x 30 line: defective skull at x < 5, implant x in [5, 25), prediction x in [5, 15) plus x = 28
    shape = (1, 1, 1, 1, 30)
    defective, target, pred = torch.zeros(shape), torch.zeros(shape), torch.zeros(shape)
    defective[..., :5] = 1
    defective[..., 25:] = 1
    target[..., 5:25] = 1
    pred[..., 5:15] = 1
    return pred, target, defective


def test_border_region_is_within_distance_of_the_touching_implant_voxels():
    _, target, defective = _line_case()
    zone = defect_border_region(target, defective, distance=3)
    # border voxels: x = 5 and x = 24 (the implant voxels next to the defective skull); zone = |x - border| <= 3
    expected = [(abs(x - 5) <= 3) or (abs(x - 24) <= 3) for x in range(30)]
    assert zone[0, 0, 0, 0].tolist() == expected


def test_dice_border_dice_and_hd95_hand_computed():
    pred, target, defective = _line_case()
    s = implant_scores(pred, target, defective, border_distance=3)
    assert s["dice"].item() == pytest.approx(2 * 10 / (10 + 20))
    # zone: x in [2, 8] and [21, 27]; target there: x 5..8 and 21..24 (8 voxels); pred there: 5..8 (4 voxels)
    assert s["border_dice"].item() == pytest.approx(2 * 4 / (4 + 8))
    # a one-voxel-thin line is all surface. pred -> target: all 0. target -> pred: ten 0s (x 5..14) and 1..10
    # (x 15..24); numpy's linear 95th percentile of those 20 sorted values: index 18.05 -> 9 + 0.05 * (10 - 9)
    assert s["hd95"].item() == pytest.approx(9.05, abs=1e-5)


def test_perfect_prediction_and_shape_errors():
    pred, target, defective = _line_case()
    s = implant_scores(target, target, defective, spacing=(1.0, 1.0, 1.5))
    assert s["dice"].item() == 1.0 and s["border_dice"].item() == 1.0 and s["hd95"].item() == 0.0
    with pytest.raises(ValueError, match="pred and target"):
        implant_scores(pred[0], target, defective)
    assert math.isfinite(s["hd95"].item())
