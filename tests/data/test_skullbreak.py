"""SkullBreak / SkullFix adapter on generated miniatures of both layouts (NRRD written by SimpleITK, and NIfTI)."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from monai_fovea.data.datasets import load_skull_mask, skullbreak_datalist


def _write_nrrd(array_xyz, path, spacing=(0.4, 0.4, 0.4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(array_xyz.transpose().astype(np.uint8))  # SimpleITK takes z, y, x
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


def _case(seed):
    rng = np.random.default_rng(seed)
    complete = (rng.random((6, 5, 4)) > 0.5).astype(np.uint8)
    implant = complete.copy()
    implant[:3] = 0
    return complete, complete - implant, implant


def test_skullbreak_layout_with_defect_types(tmp_path):
    for case in ("000", "001"):
        complete, defective, implant = _case(int(case))
        _write_nrrd(complete, tmp_path / "complete_skull" / f"{case}.nrrd")
        for kind in ("bilateral", "random_1"):
            _write_nrrd(defective, tmp_path / "defective_skull" / kind / f"{case}.nrrd")
            _write_nrrd(implant, tmp_path / "implant" / kind / f"{case}.nrrd")
    items = skullbreak_datalist(tmp_path)
    assert [(d["defect_type"], d["id"]) for d in items] == [
        ("bilateral", "000"), ("bilateral", "001"), ("random_1", "000"), ("random_1", "001")]
    assert items[3]["implant"] == str(tmp_path / "implant" / "random_1" / "001.nrrd")
    assert items[3]["complete"] == str(tmp_path / "complete_skull" / "001.nrrd")
    mask, affine = load_skull_mask(items[3]["implant"])
    assert mask.shape == (1, 6, 5, 4) and np.array_equal(mask[0], _case(1)[2])
    assert np.allclose(np.abs(np.diag(affine)[:3]), 0.4)
    d, _ = load_skull_mask(items[3]["defective"])
    c, _ = load_skull_mask(items[3]["complete"])
    assert np.array_equal(d | mask, c) and not (d & mask).any()


def test_skullfix_flat_nifti_layout_without_complete_skulls(tmp_path):
    complete, defective, implant = _case(5)
    for folder, array in (("defective_skull", defective), ("implant", implant)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(array, np.diag([0.5, 0.5, 0.5, 1])), str(tmp_path / folder / "017.nii.gz"))
    items = skullbreak_datalist(tmp_path)
    assert items == [{"defective": str(tmp_path / "defective_skull" / "017.nii.gz"),
                      "implant": str(tmp_path / "implant" / "017.nii.gz"), "id": "017", "defect_type": ""}]
    mask, affine = load_skull_mask(items[0]["defective"])
    assert np.array_equal(mask[0], defective) and np.allclose(affine, np.diag([0.5, 0.5, 0.5, 1]))


def test_missing_implant_and_missing_folder_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="defective_skull"):
        skullbreak_datalist(tmp_path)
    _write_nrrd(np.ones((3, 3, 3)), tmp_path / "defective_skull" / "002.nrrd")
    with pytest.raises(FileNotFoundError, match="no implant"):
        skullbreak_datalist(tmp_path)
