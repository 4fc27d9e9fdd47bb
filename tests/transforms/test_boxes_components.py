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


def _probability_map() -> np.ndarray:
    """MASK_2D's components as smooth probabilities (0.55..0.95) on a 0.05..0.3 background: no value repeats much."""
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.05, 0.3, MASK_2D.shape)
    prob[MASK_2D > 0] = rng.uniform(0.55, 0.95, int((MASK_2D > 0).sum()))
    return prob


def test_probability_map_without_threshold_is_refused():
    prob = _probability_map()
    with pytest.raises(ValueError, match="pass threshold"):
        ComponentBoxes(min_size=1)(prob)
    with pytest.raises(ValueError, match="pass threshold"):
        ComponentBoxesd("prob", min_size=1)({"prob": torch.as_tensor(prob, dtype=torch.float32)})
    with pytest.raises(ValueError, match="non-integer"):  # NaN is not a label either
        ComponentBoxes()(np.where(MASK_2D > 0, np.nan, 0.0))
    # float masks holding integer labels are still labels
    boxes, classes = ComponentBoxes(connectivity=8, min_size=1)(MASK_2D.astype(np.float32) * 2)
    assert boxes.tolist() == [[0, 0, 2, 2], [2, 3, 4, 6], [5, 0, 6, 1]] and classes.tolist() == [2, 2, 2]


@pytest.mark.parametrize("as_tensor", [False, True])
def test_threshold_binarises_a_probability_map(as_tensor):
    prob = _probability_map()
    prob = torch.as_tensor(prob) if as_tensor else prob
    boxes, classes = ComponentBoxes(connectivity=8, min_size=1, threshold=0.5)(prob)
    assert boxes.tolist() == [[0, 0, 2, 2], [2, 3, 4, 6], [5, 0, 6, 1]]
    assert classes.tolist() == [1, 1, 1]
    assert isinstance(boxes, torch.Tensor) == as_tensor
    # a higher threshold keeps only the pixels above it: 0.99 keeps none
    boxes, _ = ComponentBoxes(threshold=0.99, min_size=1)(prob)
    assert boxes.shape == (0, 4)


def test_threshold_in_dictionary_twin_and_nan_is_background():
    prob = _probability_map()
    prob[0, 0, 0] = np.nan  # a non-finite value in a thresholded map is background, not a component
    d = ComponentBoxesd("prob", connectivity=8, min_size=1, threshold=0.5)({"prob": prob})
    assert d["prob_boxes"].tolist() == [[1, 1, 2, 2], [2, 3, 4, 6], [5, 0, 6, 1]]
    assert d["prob_classes"].tolist() == [1, 1, 1]
