"""Foveation metrics against hand-computed confusion numbers."""

from __future__ import annotations

import math

import pytest
import torch

from monai_fovea.metrics import (
    DatasetIoU,
    confusion_counts,
    iou_per_class,
    mean_iou,
    pixel_accuracy_per_class,
)

# image 1 (3 classes):            image 2:
# target 0 0 1 1 2 2              target 0 0 0 1 1 255
# pred   0 1 1 1 2 0              pred   0 0 1 1 2 2
T = torch.tensor([[[0, 0, 1, 1, 2, 2]], [[0, 0, 0, 1, 1, 255]]])
P = torch.tensor([[[0, 1, 1, 1, 2, 0]], [[0, 0, 1, 1, 2, 2]]])


def test_confusion_counts_by_hand():
    c = confusion_counts(P, T, 3, ignore_index=255)
    # image 1: class 0 TP1 FP1 FN1; class 1 TP2 FP1 FN0; class 2 TP1 FP0 FN1
    assert c[0, :, [0, 1, 3]].tolist() == [[1, 1, 1], [2, 1, 0], [1, 0, 1]]
    # image 2 (last pixel ignored): class 0 TP2 FP0 FN1; class 1 TP1 FP1 FN1; class 2 TP0 FP1 FN0
    assert c[1, :, [0, 1, 3]].tolist() == [[2, 0, 1], [1, 1, 1], [0, 1, 0]]


def test_dataset_and_image_iou_by_hand():
    ds = iou_per_class(P, T, 3, ignore_index=255)
    # sums: class 0 TP3 FP1 FN2 -> 3/6; class 1 TP3 FP2 FN1 -> 3/6; class 2 TP1 FP1 FN1 -> 1/3
    torch.testing.assert_close(ds, torch.tensor([0.5, 0.5, 1 / 3]))
    per_image = iou_per_class(P, T, 3, ignore_index=255, reduction="image")
    torch.testing.assert_close(per_image, torch.tensor([[1 / 3, 2 / 3, 1 / 2], [2 / 3, 1 / 3, 0.0]]))
    torch.testing.assert_close(mean_iou(P, T, 3, ignore_index=255), torch.tensor((0.5 + 0.5 + 1 / 3) / 3))
    torch.testing.assert_close(mean_iou(P, T, 3, exclude=(2,), ignore_index=255), torch.tensor(0.5))
    torch.testing.assert_close(mean_iou(P, T, 3, ignore_index=255, reduction="image"),
                               torch.tensor([(1 / 3 + 2 / 3 + 1 / 2) / 3, 1 / 3]))


def test_pixel_accuracy_and_empty_class():
    acc = pixel_accuracy_per_class(P, T, 3, ignore_index=255)
    torch.testing.assert_close(acc, torch.tensor([3 / 5, 3 / 4, 1 / 2]))
    iou = iou_per_class(torch.tensor([[0, 0]]), torch.tensor([[0, 0]]), 2)
    assert iou[0].item() == 1.0 and math.isnan(iou[1].item())
    assert mean_iou(torch.tensor([[0, 0]]), torch.tensor([[0, 0]]), 2).item() == 1.0  # empty class not averaged


def test_dataset_accumulator_equals_one_shot():
    m = DatasetIoU(3, exclude=(2,), ignore_index=255)
    m(P[:1], T[:1])
    m(P[1:], T[1:])
    out = m.aggregate()
    torch.testing.assert_close(out["iou"].float(), iou_per_class(P, T, 3, ignore_index=255))
    assert out["mean_iou"].item() == pytest.approx(0.5)
    torch.testing.assert_close(out["accuracy"].float(), torch.tensor([3 / 5, 3 / 4, 1 / 2]))


def test_bad_labels_are_reported():
    with pytest.raises(ValueError, match="num_classes"):
        confusion_counts(torch.tensor([[0, 3]]), torch.tensor([[0, 1]]), 3)
    with pytest.raises(ValueError, match="same shape"):
        confusion_counts(torch.tensor([[0, 1]]), torch.tensor([[0, 1, 1]]), 3)
