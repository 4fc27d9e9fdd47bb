"""inference_datalist: the inputs of a bundle run, their output names, and what is skipped or cleaned."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from monai_fovea.data.datalist import inference_datalist, remove_stale_temporaries


def _touch(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_stems_are_unique_and_inputs_sorted(tmp_path):
    for name in ("b.png", "x.png", "x.tif", "a.nii.gz", "a.nii", "slide.a.png", "slide.b.png", ".hidden.png"):
        _touch(tmp_path / "in" / name)
    items = inference_datalist(tmp_path / "in", tmp_path / "out", ["{stem}_mask.*"])
    assert [(os.path.basename(i["image"]), i["stem"]) for i in items] == [
        ("a.nii", "a_nii"), ("a.nii.gz", "a_nii_gz"), ("b.png", "b"), ("slide.a.png", "slide.a"),
        ("slide.b.png", "slide.b"), ("x.png", "x_png"), ("x.tif", "x_tif")]
    assert all(i["output_dir"] == str(tmp_path / "out") for i in items)
    assert not (tmp_path / "out").exists()  # created by the first writer, never empty


def test_names_that_still_collide_are_an_error_listing_them(tmp_path):
    a, b = _touch(tmp_path / "one" / "x.png"), _touch(tmp_path / "two" / "x.png")
    with pytest.raises(ValueError, match=r"same name \(x_png\)"):
        inference_datalist([a, b, _touch(tmp_path / "one" / "x.tif")], tmp_path / "out", ["{stem}_mask.png"])


def test_finished_inputs_are_skipped_unless_overwrite(tmp_path):
    _touch(tmp_path / "in" / "a.png")
    _touch(tmp_path / "in" / "b.png")
    _touch(tmp_path / "out" / "a_mask.tif")
    _touch(tmp_path / "out" / "a_boxes.json")
    _touch(tmp_path / "out" / "b_mask.png")  # b is missing its boxes: not finished
    outputs = ["{stem}_mask.*", "{stem}_boxes.json"]
    assert [i["stem"] for i in inference_datalist(tmp_path / "in", tmp_path / "out", outputs)] == ["b"]
    assert [i["stem"] for i in inference_datalist(tmp_path / "in", tmp_path / "out", outputs, overwrite=True)] == ["a", "b"]


def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = _touch(tmp_path / f".case_mask.tmp-{dead_pid}-0123abcd.nii.gz")
    stale_dir = tmp_path / f".slide_labelmap.tmp-{dead_pid}-89abcdefxyz"
    stale_dir.mkdir()
    mine = _touch(tmp_path / f".case_mask.tmp-{os.getpid()}-0123abcd.nii.gz")
    other = _touch(tmp_path / ".notes.txt")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stale.name, stale_dir.name])
    assert mine.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path, include_own=True) == [mine]
