"""ComponentBoxes: exact boxes of hand-drawn masks, per connectivity, 2D and 3D, binary and multi-class."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_fovea.transforms import ComponentBoxes, ComponentBoxesd

# two pixels touching only diagonally, a 2x3 block, a single pixel
MASK_2D = np.array(
    [
        [1, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 0],
    ],
    np.uint8,
)[None]


@pytest.mark.parametrize(
    "connectivity, expected",
    [
        (4, [[0, 0, 1, 1], [1, 1, 2, 2], [2, 3, 4, 6], [5, 0, 6, 1]]),
        (8, [[0, 0, 2, 2], [2, 3, 4, 6], [5, 0, 6, 1]]),
        (None, [[0, 0, 2, 2], [2, 3, 4, 6], [5, 0, 6, 1]]),
    ],
)
def test_2d_connectivity(connectivity, expected):
    boxes, classes = ComponentBoxes(connectivity=connectivity, min_size=1)(MASK_2D)
    assert isinstance(boxes, np.ndarray) and boxes.dtype == np.int64
    assert boxes.tolist() == expected
    assert classes.tolist() == [1] * len(expected)


def test_min_size_drops_small_components():
    boxes, _ = ComponentBoxes(connectivity=8, min_size=3)(MASK_2D)
    assert boxes.tolist() == [[2, 3, 4, 6]]  # the diagonal pair (2 px) and the single pixel go


def test_multiclass_components_per_class():
    mask = np.zeros((1, 5, 5), np.int64)
    mask[0, 0:2, 0:2] = 2
    mask[0, 2:4, 2:4] = 1  # touches class 2 diagonally: still separate components
    mask[0, 4, 4] = 2
    boxes, classes = ComponentBoxes(min_size=1)(torch.as_tensor(mask))
    assert isinstance(boxes, torch.Tensor)
    assert boxes.tolist() == [[2, 2, 4, 4], [0, 0, 2, 2], [4, 4, 5, 5]]
    assert classes.tolist() == [1, 2, 2]


def _mask_3d():
    m = np.zeros((1, 4, 4, 4), np.uint8)
    m[0, 0, 0, 0] = 1
    m[0, 0, 1, 0] = 1  # face neighbour of (0,0,0)
    m[0, 1, 2, 0] = 1  # edge neighbour of (0,1,0)
    m[0, 2, 3, 1] = 1  # vertex neighbour of (1,2,0)
    m[0, 3, 0:2, 2:4] = 1  # a separate 1x2x2 plate
    return m


@pytest.mark.parametrize(
    "connectivity, expected",
    [
        (6, [[0, 0, 0, 1, 2, 1], [1, 2, 0, 2, 3, 1], [2, 3, 1, 3, 4, 2], [3, 0, 2, 4, 2, 4]]),
        (18, [[0, 0, 0, 2, 3, 1], [2, 3, 1, 3, 4, 2], [3, 0, 2, 4, 2, 4]]),
        (26, [[0, 0, 0, 3, 4, 2], [3, 0, 2, 4, 2, 4]]),
    ],
)
def test_3d_connectivity(connectivity, expected):
    boxes, classes = ComponentBoxes(connectivity=connectivity, min_size=1)(_mask_3d())
    assert boxes.tolist() == expected
    assert len(classes) == len(expected)


def test_empty_and_bad_input():
    boxes, classes = ComponentBoxes()(np.zeros((1, 5, 5)))
    assert boxes.shape == (0, 4) and classes.shape == (0,)
    with pytest.raises(ValueError, match="connectivity"):
        ComponentBoxes(connectivity=6)(MASK_2D)
    with pytest.raises(ValueError, match="one channel"):
        ComponentBoxes()(np.zeros((2, 5, 5)))


def test_dictionary_twin_on_metatensor():
    d = ComponentBoxesd("label", connectivity=4, min_size=2)({"label": MetaTensor(torch.as_tensor(MASK_2D))})
    assert d["label_boxes"].tolist() == [[2, 3, 4, 6]]
    assert d["label_classes"].tolist() == [1]
    assert isinstance(d["label"], MetaTensor)
