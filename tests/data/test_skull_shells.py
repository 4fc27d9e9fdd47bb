"""Synthetic skull shells: seeded, closed, thin, with the requested thickness range."""

import numpy as np
import pytest
from scipy import ndimage

from monai_fovea.data.synthetic import skull_shell


def test_seeded_and_different_seeds_differ():
    a, b, c = skull_shell((40, 40, 32), seed=3), skull_shell((40, 40, 32), seed=3), skull_shell((40, 40, 32), seed=4)
    assert a.dtype == np.uint8 and a.shape == (40, 40, 32)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_shell_is_closed_one_component_and_sparse():
    m = skull_shell((48, 48, 40), seed=0, thickness=(2, 4)).astype(bool)
    # closed: the background splits into the outside and exactly one enclosed cavity containing the centre
    bg, n_bg = ndimage.label(~m)
    assert n_bg == 2 and bg[24, 24, 20] != bg[0, 0, 0]
    assert ndimage.label(m, np.ones((3, 3, 3)))[1] == 1
    assert 0.03 < m.mean() < 0.25


def test_thickness_range_is_respected():
    m = skull_shell((64, 64, 64), seed=2, thickness=(2.0, 5.0), bumpiness=0.0).astype(bool)
    # the distance from a bone voxel to the nearest non-bone voxel is at most half the max thickness (+1 voxel)
    depth = ndimage.distance_transform_edt(m)
    assert depth.max() <= 5.0 / 2 + 1.0
    assert depth.max() >= 1.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="thickness"):
        skull_shell((16, 16, 16), thickness=(3, 2))
    with pytest.raises(ValueError, match="shape"):
        skull_shell((4, 16, 16))
