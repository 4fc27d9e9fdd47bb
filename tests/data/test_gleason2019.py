"""Gleason2019 adapter and STAPLE fusion, on a generated miniature of the challenge layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from monai_fovea.data.datasets import GLEASON_LABEL_MAP, gleason2019_datalist
from monai_fovea.data.datasets.gleason2019 import center_crop, remap_labels
from monai_fovea.data.staple import majority_vote, staple_fuse


def test_staple_agrees_with_consensus_and_keeps_single_map():
    rng = np.random.default_rng(0)
    truth = np.zeros((40, 40), np.uint8)
    truth[5:20, 5:30] = 3
    truth[25:35, 10:35] = 4
    raters = []
    for k in range(3):
        m = truth.copy()
        flip = rng.random(truth.shape) < 0.05  # each rater errs on 5% of the pixels, independently
        m[flip] = rng.choice([0, 3, 4, 5], int(flip.sum()))
        raters.append(m)
    fused = staple_fuse(raters)
    assert fused.dtype == np.uint8
    # two of three independent raters agree almost everywhere: STAPLE recovers the truth where any two agree
    agree = (raters[0] == raters[1]) | (raters[0] == raters[2]) | (raters[1] == raters[2])
    assert (fused[agree] == majority_vote(raters)[agree]).mean() > 0.99
    assert (fused == truth).mean() > 0.99
    assert np.array_equal(staple_fuse([truth]), truth)
    with pytest.raises(ValueError, match="shape"):
        staple_fuse([truth, truth[:10]])
    with pytest.raises(ValueError, match="empty"):
        staple_fuse([])


def test_label_map_and_crop():
    raw = np.array([[0, 1, 2, 6], [3, 4, 5, 3]])
    assert remap_labels(raw).tolist() == [[0, 0, 0, 0], [1, 2, 3, 1]]
    with pytest.raises(ValueError, match=r"\[7\]"):
        remap_labels(np.array([7]))
    a = np.arange(36).reshape(6, 6)
    assert center_crop(a, 2).tolist() == [[14, 15], [20, 21]]
    with pytest.raises(ValueError, match="crop size"):
        center_crop(a, 8)


def _write_miniature(root):
    """Three cores: one with annotators 1, 2, 4; one with annotator 5 only; one without annotations."""
    (root / "Train Imgs").mkdir(parents=True)
    size = 48
    truth = np.zeros((size, size), np.uint8)
    truth[:, :] = 1  # benign (raw 1)
    truth[10:30, 8:40] = 3
    truth[32:44, 4:20] = 4
    truth[2:6, 40:46] = 5
    truth[40:46, 30:46] = 6  # raw 6 -> benign too
    for core in ("slide001_core003", "slide002_core010", "slide003_core001"):
        img = np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "Train Imgs" / f"{core}.jpg")
    annotations = {1: truth, 2: truth.copy(), 4: truth.copy()}
    annotations[4][10:30, 8:40] = 4  # annotator 4 disagrees on the G3 region: outvoted by 1 and 2
    for k, m in annotations.items():
        (root / f"Maps{k}_T").mkdir(exist_ok=True)
        Image.fromarray(m).save(root / f"Maps{k}_T" / "slide001_core003_classimg_nonconvex.png")
    (root / "Maps5_T").mkdir()
    Image.fromarray(truth).save(root / "Maps5_T" / "slide002_core010_classimg_nonconvex.png")
    return truth


def test_datalist_on_generated_layout(tmp_path):
    truth = _write_miniature(tmp_path / "gleason")
    items = gleason2019_datalist(tmp_path / "gleason", cache_dir=tmp_path / "cache", crop_size=40)
    assert [it["id"] for it in items] == ["slide001_core003", "slide002_core010"]  # core without maps skipped
    assert items[0]["annotators"] == [1, 2, 4] and items[1]["annotators"] == [5]
    assert items[0]["slide"] == 1
    expected = center_crop(remap_labels(truth, GLEASON_LABEL_MAP), 40)
    for it in items:
        lab = np.asarray(Image.open(it["label"]))
        assert lab.shape == (40, 40)
        assert np.array_equal(lab, expected)  # fused (2 of 3 say G3), remapped, centre-cropped
        img = np.asarray(Image.open(it["image"]))
        assert img.shape == (40, 40, 3)
    assert set(np.unique(expected).tolist()) == {0, 1, 2, 3}
    # cached: a second call reuses the files
    mtime = (tmp_path / "cache" / "slide001_core003_label.png").stat().st_mtime_ns
    again = gleason2019_datalist(tmp_path / "gleason", cache_dir=tmp_path / "cache", crop_size=40)
    assert again == items
    assert (tmp_path / "cache" / "slide001_core003_label.png").stat().st_mtime_ns == mtime
    with pytest.raises(FileNotFoundError, match="root"):
        gleason2019_datalist(tmp_path / "missing")
