"""Synthetic small objects: exact instance counts, separation, determinism, contrast, 2D and 3D."""

import numpy as np
import pytest
from scipy import ndimage

from monai_fovea.data.synthetic import small_objects


@pytest.mark.parametrize("size, n", [((128, 160), 25), ((40, 48, 56), 12)])
def test_instances_are_separate_and_sized(size, n):
    img, inst = small_objects(size, num_objects=n, radius=(2.0, 5.0), seed=3)
    assert img.shape == inst.shape == (1, *size) and img.dtype == np.float32 and inst.dtype == np.int32
    assert sorted(np.unique(inst).tolist()) == list(range(n + 1))
    # no two instances touch, even with full (8 / 26) connectivity
    _, components = ndimage.label(inst[0] > 0, structure=np.ones((3,) * len(size)))
    assert components == n
    # every object fits in its radius range: bounding box side <= 2 * max radius + 1
    for slc in ndimage.find_objects(inst[0]):
        assert max(s.stop - s.start for s in slc) <= 11


def test_deterministic_and_objects_brighter():
    a = small_objects((96, 96), 10, seed=5)
    b = small_objects((96, 96), 10, seed=5)
    c = small_objects((96, 96), 10, seed=6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    img, inst = a
    assert img[inst > 0].mean() > img[inst == 0].mean() + 0.3  # contrast range (0.5, 1) minus blur


def test_bad_arguments():
    with pytest.raises(ValueError, match="spatial_size"):
        small_objects((64,))
    with pytest.raises(ValueError, match="radius"):
        small_objects((64, 64), radius=(5.0, 2.0))
