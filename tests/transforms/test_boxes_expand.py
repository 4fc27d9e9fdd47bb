"""ExpandBoxes / RandJitterBoxes against hand-computed coordinates."""

import numpy as np
import pytest
import torch

from monai_fovea.transforms import ExpandBoxes, ExpandBoxesd, RandJitterBoxes, RandJitterBoxesd


def test_scale_square_margin():
    # [2,2,4,3] x4 -> [8,8,16,12] (8x4) -> square: [8,6,16,14] -> margin 2: [6,4,18,16]
    out = ExpandBoxes(scale=4, margin=2, image_size=(64, 64))(np.array([[2, 2, 4, 3]]))
    assert out.tolist() == [[6, 4, 18, 16]]


def test_non_integer_and_per_axis_scale():
    assert ExpandBoxes(scale=2.5, min_size=1, image_size=(20, 20))(np.array([[1, 1, 3, 3]])).tolist() == [[2, 2, 8, 8]]
    assert ExpandBoxes(scale=(2, 4), min_size=1, image_size=(20, 20))(np.array([[1, 1, 3, 2]])).tolist() == [[2, 4, 6, 8]]


def test_shift_inside_at_borders_keeps_size():
    # (4x5) -> square 5: [0,25,5,30] -> margin 3: [-3,22,8,33] (11x11) -> shifted: [0,19,11,30]
    out = ExpandBoxes(margin=3, image_size=(20, 30))(torch.tensor([[0, 25, 4, 30]]))
    assert isinstance(out, torch.Tensor)
    assert out.tolist() == [[0, 19, 11, 30]]


def test_drop_small_and_return_indices():
    # [5,5,7,9]: square 4 -> [4,5,8,9], side 4 < 5 -> dropped; [0,0,5,5] kept
    boxes, keep = ExpandBoxes(min_size=5, image_size=(50, 50), return_indices=True)(np.array([[5, 5, 7, 9], [0, 0, 5, 5]]))
    assert boxes.tolist() == [[0, 0, 5, 5]]
    assert keep.tolist() == [1]


def test_larger_than_image_is_clipped():
    # square makes the box 30x30 but the image is only 10 high: clipped to [0, 10) on that axis
    assert ExpandBoxes(image_size=(10, 40))(np.array([[0, 0, 10, 30]])).tolist() == [[0, 0, 10, 30]]


def test_relative_margin():
    out = ExpandBoxes(relative_margin=0.3, image_size=(100, 100))(np.array([[10, 10, 20, 20]]))
    assert out.tolist() == [[7, 7, 23, 23]]  # pad round(0.3 * 10) = 3


def test_cube_3d():
    # (2,4,6) -> cube 6 starting at (-2,-1,0) -> margin 1: (-3,-2,-1), side 8 -> shifted to the origin
    out = ExpandBoxes(margin=1, image_size=(50, 50, 50))(np.array([[0, 0, 0, 2, 4, 6]]))
    assert out.tolist() == [[0, 0, 0, 8, 8, 8]]


def test_dictionary_twin_and_errors():
    d = ExpandBoxesd("boxes", image_key="image", margin=1)({"boxes": np.array([[0, 0, 2, 4]]), "image": np.zeros((1, 8, 8))})
    assert d["boxes"].tolist() == [[0, 0, 6, 6]]
    with pytest.raises(ValueError, match="image_size"):
        ExpandBoxes()(np.array([[0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="boxes must be"):
        ExpandBoxes(image_size=(4, 4))(np.array([0, 0, 2, 2]))


def test_jitter_bounds_and_reproducibility():
    boxes = np.tile(np.array([[20, 30, 40, 50]]), (200, 1))
    t = RandJitterBoxes(max_shift=3)
    t.set_random_state(1)
    out = t(boxes)
    start_shift = out[:, :2] - boxes[:, :2]
    size_shift = (out[:, 2:] - out[:, :2]) - (boxes[:, 2:] - boxes[:, :2])
    assert start_shift.min() == -3 and start_shift.max() == 3
    assert size_shift.min() == -3 and size_shift.max() == 3
    t.set_random_state(1)
    assert np.array_equal(t(boxes), out)
    assert RandJitterBoxesd("b", max_shift=0)({"b": boxes})["b"].tolist() == boxes.tolist()
    tiny = RandJitterBoxes(max_shift=5)(np.tile(np.array([[0, 0, 1, 1]]), (50, 1)))
    assert ((tiny[:, 2:] - tiny[:, :2]) >= 1).all()
