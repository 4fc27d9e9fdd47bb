"""The FoV-trade-off generator: determinism and the structure its docstring promises."""

from __future__ import annotations

import numpy as np
import pytest

from monai_fovea.data.synthetic import fov_tradeoff

SMALL_3D = dict(shape=(64, 64, 64), num_fine=2, num_context=2, fine_size=6, blob_radius=6, ring_gap=4, ring_width=2)


@pytest.mark.parametrize("kwargs", [dict(shape=(192, 192)), SMALL_3D])
def test_deterministic_per_seed(kwargs):
    a, b, c = fov_tradeoff(seed=3, **kwargs), fov_tradeoff(seed=3, **kwargs), fov_tradeoff(seed=4, **kwargs)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    assert not np.array_equal(a["image"], c["image"])


def _block_means(x: np.ndarray) -> np.ndarray:
    ndim = x.ndim
    shape = []
    for s in x.shape:
        shape += [s // 2, 2]
    return x.reshape(shape).mean(axis=tuple(range(1, 2 * ndim, 2)))


@pytest.mark.parametrize("kwargs", [dict(shape=(192, 192)), SMALL_3D])
def test_fine_classes_vanish_after_2x_downsampling(kwargs):
    d = fov_tradeoff(seed=0, **kwargs)
    img, lab = d["image"][0], d["label"][0]
    ndim = img.ndim
    assert set(d["fine_classes"]) == {1, 2}
    for box, cls in zip(d["fine_boxes"], d["fine_classes"]):
        sl = tuple(slice(s, e) for s, e in zip(box[:ndim], box[ndim:]))
        assert np.all(lab[sl] == cls)
        region = img[sl]
        assert np.all(_block_means(region) == 0.0)  # exactly the background's mean after any 2x pooling
        assert set(np.unique(region).tolist()) == {-0.5, 0.5}
        # full resolution tells them apart: checker flips along every axis, stripes only along the last one
        flips_first_axis = np.all(np.diff(region, axis=0) != 0)
        assert flips_first_axis == (cls == 1)
        assert np.all(np.diff(region, axis=-1) != 0)


@pytest.mark.parametrize("kwargs", [dict(shape=(192, 192)), SMALL_3D])
def test_context_classes_identical_inside_and_differ_only_by_ring(kwargs):
    d = fov_tradeoff(seed=0, **kwargs)
    img, lab = d["image"][0], d["label"][0]
    centers, classes = d["blob_centers"], d["blob_classes"]
    assert sorted(classes) == [3, 4]
    fov = d["context_fov"]
    half = int((fov // 2 - 1) / np.sqrt(img.ndim))  # the largest window that fits inside the ring
    crops = [img[tuple(slice(c - half, c + half + 1) for c in ctr)] for ctr in centers]
    assert np.array_equal(crops[0], crops[1])  # pixel-identical insides: no small FoV can separate 3 and 4
    # the whole disc inside the ring is identical too
    h = fov // 2 - 1
    grids = np.meshgrid(*[np.arange(-h, h + 1)] * img.ndim, indexing="ij")
    disc = np.sqrt(sum(g**2 for g in grids)) < fov // 2
    discs = [img[tuple(slice(c - h, c + h + 1) for c in ctr)][disc] for ctr in centers]
    assert np.array_equal(discs[0], discs[1])
    # a window of the context FoV reaches the ring, whose sign differs
    r = kwargs.get("blob_radius", 20) + kwargs.get("ring_gap", 12)
    for ctr, cls in zip(centers, classes):
        ring_px = img[tuple(ctr[:-1]) + (ctr[-1] + r + 1,)]
        assert ring_px == (1.0 if cls == 3 else -1.0)
        assert lab[tuple(ctr[:-1]) + (ctr[-1] + r + 1,)] == 0


def test_blobs_visible_at_low_resolution_and_bad_shape():
    d = fov_tradeoff(shape=(192, 192), seed=1)
    img = d["image"][0]
    for ctr in d["blob_centers"]:
        assert img[ctr[0] - 8 : ctr[0] + 8, ctr[1] - 8 : ctr[1] + 8].mean() > 0.3  # blob_offset 0.6 vs background 0
    assert set(np.unique(d["label"]).tolist()) == {0, 1, 2, 3, 4}
    with pytest.raises(ValueError, match="shape"):
        fov_tradeoff(shape=(40, 40))
