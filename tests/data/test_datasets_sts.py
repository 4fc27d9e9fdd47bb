"""Segment-then-segment dataset adapters on generated miniatures of the DSB2018, Kvasir-SEG and AVT layouts."""

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from monai_fovea.data.datasets import avt_datalist, dsb2018_datalist, kvasir_seg_datalist, load_nrrd


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_dsb2018_masks_merged(tmp_path):
    root = tmp_path / "stage1_train"
    for case, boxes in {"bbb": [(0, 0, 2, 2)], "aaa": [(1, 1, 3, 4), (5, 5, 8, 8)]}.items():
        _png(root / case / "images" / f"{case}.png", np.full((10, 12, 4), 100, np.uint8))
        for i, (r0, c0, r1, c1) in enumerate(boxes):
            m = np.zeros((10, 12), np.uint8)
            m[r0:r1, c0:c1] = 255
            _png(root / case / "masks" / f"m{i}.png", m)
    (root / "ccc" / "images").mkdir(parents=True)  # no masks: skipped
    items = dsb2018_datalist(root)
    assert [d["id"] for d in items] == ["aaa", "bbb"]
    assert items[0]["image"] == str(root / "aaa" / "images" / "aaa.png")
    label = np.asarray(Image.open(items[0]["label"]))
    expected = np.zeros((10, 12), np.uint16)
    expected[1:3, 1:4] = 1
    expected[5:8, 5:8] = 2
    assert label.dtype == np.uint16 and np.array_equal(label, expected)
    assert items[0]["label"] == str(tmp_path / "stage1_train_labels" / "aaa_label.png")
    with pytest.raises(FileNotFoundError, match="root"):
        dsb2018_datalist(tmp_path / "missing")


def test_kvasir_pairs(tmp_path):
    for name in ["b1", "a2"]:
        _png(tmp_path / "Kvasir-SEG" / "images" / f"{name}.jpg", np.zeros((8, 8, 3), np.uint8))
        _png(tmp_path / "Kvasir-SEG" / "masks" / f"{name}.jpg", np.zeros((8, 8, 3), np.uint8))
    items = kvasir_seg_datalist(tmp_path / "Kvasir-SEG")
    assert [d["id"] for d in items] == ["a2", "b1"]
    assert items[1]["label"].endswith("masks/b1.jpg") and items[1]["image"].endswith("images/b1.jpg")
    _png(tmp_path / "Kvasir-SEG" / "images" / "c3.jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="c3.jpg has no mask"):
        kvasir_seg_datalist(tmp_path / "Kvasir-SEG")


def _nrrd(path, array_zyx, spacing=(0.8, 0.7, 2.0), origin=(10.0, 20.0, 30.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


def test_avt_datalist_and_nrrd_geometry(tmp_path):
    vol = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # z, y, x
    seg = (vol % 7 == 0).astype(np.uint8)
    for centre, case in [("Rider", "R2"), ("Dongyang", "D1")]:
        _nrrd(tmp_path / "AVT" / centre / case / f"{case}.nrrd", vol)
        _nrrd(tmp_path / "AVT" / centre / case / f"{case}.seg.nrrd", seg)
    items = avt_datalist(tmp_path / "AVT")
    assert [d["id"] for d in items] == ["D1", "R2"]
    assert items[0]["image"].endswith("Dongyang/D1/D1.nrrd") and items[0]["label"].endswith("D1.seg.nrrd")
    array, affine = load_nrrd(items[0]["image"])
    assert array.shape == (1, 6, 5, 4) and np.array_equal(array[0], vol.transpose())
    expected = np.array([[-0.8, 0, 0, -10.0], [0, -0.7, 0, -20.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])
    assert np.allclose(affine, expected)
    label, _ = load_nrrd(items[0]["label"])
    assert np.array_equal(label[0], seg.transpose())
    (tmp_path / "AVT" / "Rider" / "R2" / "R2.nrrd").unlink()
    with pytest.raises(FileNotFoundError, match="no volume R2.nrrd"):
        avt_datalist(tmp_path / "AVT")
