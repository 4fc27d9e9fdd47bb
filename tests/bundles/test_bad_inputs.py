"""Bad and unusual inputs through the bundles, as a user meets them (docs/RELIABILITY.md lists every row).

Each bundle runs once over a folder of bad inputs next to a good one (module fixtures); each test then checks what
the user sees for one input: a ``FAILED <file>: <reason>`` line naming the file, the good files' outputs, exit
code 1, inputs unchanged. Inputs are small and generated here.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from monai_fovea.data.io import write_nifti, write_pyramidal_tiff
from monai_fovea.data.synthetic import skull_shell, small_objects

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"
AFFINE = np.array([[-0.8, 0, 0, 40.0], [0, 0.8, 0, -30.0], [0, 0, 1.2, 12.5], [0, 0, 0, 1]])

pytestmark = pytest.mark.slow


def bundle(name: str, configs: list[str], **overrides) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` exactly as a user runs it; returns the finished process whatever its status."""
    files = [str(BUNDLES / name / "configs" / c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files[0] if len(files) == 1 else repr(files)]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def failed_line(proc: subprocess.CompletedProcess, path: Path) -> str:
    """The ``FAILED <path>: ...`` line of ``path`` (exactly one), from the summary printed at the end."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"FAILED {path}: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def skull_case(seed: int = 0) -> np.ndarray:
    from monai_fovea.apps.sparse_completion import make_defect_case

    return make_defect_case(skull_shell((48, 48, 40), seed=seed, thickness=(3, 5)).astype(bool), seed, (5, 8))["defective"]


# ---------------------------------------------------------------------------------------------------------------
# sparse_skull_completion


@pytest.fixture(scope="module")
def skull_run(tmp_path_factory):
    src = tmp_path_factory.mktemp("skull_in")
    good = skull_case(0)
    write_nifti(good.astype(np.uint8), src / "good.nii.gz", AFFINE)
    hu = np.where(good, 1200, -1000).astype(np.int16) + np.random.default_rng(0).integers(-30, 30, good.shape).astype(np.int16)
    write_nifti(hu, src / "ct_hu.nii.gz", AFFINE)
    write_nifti(np.zeros((48, 48, 40), np.uint8), src / "empty.nii.gz", AFFINE)
    data = (src / "good.nii.gz").read_bytes()
    (src / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (src / "notes.nii.gz").write_text("this is a text file with a NIfTI name\n")
    write_nifti(np.ones((48, 48), np.uint8), src / "flat.nii.gz", AFFINE)
    nan = good.astype(np.float32)
    nan[:4] = np.nan
    write_nifti(nan, src / "nan.nii.gz", AFFINE)
    write_nifti(good.astype(np.uint8), src / "dup.nii.gz", AFFINE)
    nib.save(nib.Nifti1Image(good.astype(np.uint8), AFFINE), str(src / "dup.nii"))
    before = digests(src)
    out = tmp_path_factory.mktemp("skull_out") / "out"
    proc = bundle("sparse_skull_completion", ["inference.json"], input=src, output_dir=out)
    return {"src": src, "out": out, "proc": proc, "before": before, "hu": hu, "good": good}


def test_skull_batch_exit_code_summary_and_untouched_inputs(skull_run):
    proc = skull_run["proc"]
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "monai_fovea: 6 of 9 input(s) failed (listed above)"
    assert digests(skull_run["src"]) == skull_run["before"]  # no input is ever modified
    assert outputs(skull_run["out"]) == sorted(
        f"{s}_{k}.nii.gz" for s in ("good", "dup_nii", "dup_nii_gz") for k in ("implant", "completed"))


def test_skull_ct_in_hu_is_refused_with_how_to_pass_it(skull_run):
    line = failed_line(skull_run["proc"], skull_run["src"] / "ct_hu.nii.gz")
    assert "not a binary skull mask" in line and "--input_kind ct" in line


def test_skull_ct_in_hu_with_input_kind_ct_gives_the_masks_result(skull_run, tmp_path):
    src = tmp_path / "in"
    write_nifti(skull_run["hu"], src / "ct_hu.nii.gz", AFFINE)
    proc = bundle("sparse_skull_completion", ["inference.json"], input=src, output_dir=tmp_path / "out",
                  input_kind="ct")
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = nib.load(tmp_path / "out" / "ct_hu_implant.nii.gz").get_fdata()
    b = nib.load(skull_run["out"] / "good_implant.nii.gz").get_fdata()
    np.testing.assert_array_equal(a, b)  # HU >= 226 is exactly the good mask


def test_skull_empty_mask_is_refused(skull_run):
    assert "the skull mask is empty" in failed_line(skull_run["proc"], skull_run["src"] / "empty.nii.gz")


def test_skull_truncated_gzip_is_named(skull_run):
    line = failed_line(skull_run["proc"], skull_run["src"] / "truncated.nii.gz")
    assert re.search(r"EOFError|gzip|Compressed file ended|truncated", line, re.I), line


def test_skull_text_file_with_nifti_suffix_is_named(skull_run):
    failed_line(skull_run["proc"], skull_run["src"] / "notes.nii.gz")


def test_skull_2d_volume_is_refused(skull_run):
    assert "3D" in failed_line(skull_run["proc"], skull_run["src"] / "flat.nii.gz")


def test_skull_nan_voxels_are_refused_with_the_count(skull_run):
    line = failed_line(skull_run["proc"], skull_run["src"] / "nan.nii.gz")
    assert f"{4 * 48 * 40} voxel(s) are NaN or infinite" in line


def test_skull_same_stem_gets_distinct_output_names(skull_run):
    a = nib.load(skull_run["out"] / "dup_nii_implant.nii.gz").get_fdata()
    b = nib.load(skull_run["out"] / "dup_nii_gz_implant.nii.gz").get_fdata()
    c = nib.load(skull_run["out"] / "good_implant.nii.gz").get_fdata()
    np.testing.assert_array_equal(a, c)  # same content, own names, nothing overwritten
    np.testing.assert_array_equal(b, c)


def test_skull_rerun_skips_finished_outputs_unless_overwrite(skull_run, tmp_path):
    src = tmp_path / "in"
    write_nifti(skull_run["good"].astype(np.uint8), src / "good.nii.gz", AFFINE)
    out = tmp_path / "out"
    assert bundle("sparse_skull_completion", ["inference.json"], input=src, output_dir=out).returncode == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # "false" as typed on the command line is a string: it must still mean no (cohort.flag)
    proc = bundle("sparse_skull_completion", ["inference.json"], input=src, output_dir=out, overwrite="false")
    assert proc.returncode == 0 and "skipping 1 of 1 input(s) whose outputs exist" in proc.stdout + proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == first
    proc = bundle("sparse_skull_completion", ["inference.json"], input=src, output_dir=out, overwrite="true")
    assert proc.returncode == 0
    assert all(p.stat().st_mtime_ns > first[p.name] for p in out.iterdir())


def test_skull_kill_9_leaves_no_partial_output_and_a_rerun_is_byte_identical(tmp_path):
    """kill -9 while the first of three volumes is being written; every file under a final name is complete, the
    re-run finishes the rest, and the outputs are byte-identical to an uninterrupted run's (CPU determinism)."""
    src = tmp_path / "in"
    for i in range(3):
        write_nifti(skull_case(i).astype(np.uint8), src / f"s{i}.nii.gz", AFFINE)
    ref_out, out = tmp_path / "ref", tmp_path / "out"
    assert bundle("sparse_skull_completion", ["inference.json"], input=src, output_dir=ref_out).returncode == 0
    files = [str(BUNDLES / "sparse_skull_completion" / "configs" / "inference.json")]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files[0], "--input", str(src),
           "--output_dir", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and not (out.exists() and any(out.iterdir())):
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    for p in out.iterdir():
        if not p.name.startswith("."):  # a final name is only ever a complete file
            assert p.read_bytes() == (ref_out / p.name).read_bytes()
    proc = bundle("sparse_skull_completion", ["inference.json"], input=src, output_dir=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert digests(out) == digests(ref_out)  # temporaries of the killed run removed, results identical


def test_device_cuda_without_cuda_says_what_to_do(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error under test cannot happen here")
    src = tmp_path / "in"
    write_nifti(skull_case(0).astype(np.uint8), src / "good.nii.gz", AFFINE)
    proc = bundle("sparse_skull_completion", ["inference.json"], input=src, output_dir=tmp_path / "out", device="cuda")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR (monai_fovea): RuntimeError: --device cuda:") and "--device cpu" in last
    assert not (tmp_path / "out").exists()


def test_a_folder_with_no_matching_file_is_named(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("no volumes here")
    proc = bundle("sparse_skull_completion", ["inference.json"], input=tmp_path / "in", output_dir=tmp_path / "out")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "FileNotFoundError" in last and str(tmp_path / "in") in last
    assert not (tmp_path / "out").exists()  # no empty output folder


# ---------------------------------------------------------------------------------------------------------------
# segment_then_segment, 2D


def cells(seed: int, shape=(96, 96)) -> np.ndarray:
    img, _ = small_objects(shape, num_objects=6, radius=(4.0, 7.0), seed=seed)
    return np.clip(img[0], 0, 1)


@pytest.fixture(scope="module")
def sts_run(tmp_path_factory):
    src = tmp_path_factory.mktemp("sts_in")
    base = cells(1)
    img8 = (base * 200).astype(np.uint8)
    Image.fromarray(img8).save(src / "good.png")
    Image.fromarray(img8.astype(np.uint16) * 257).save(src / "deep16.png")  # 16-bit grey, values > 255
    tifffile.imwrite(src / "float.tif", img8.astype(np.float32) / 255)
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(src / "blank.png")
    nan = (base * 200).astype(np.float32)
    nan[:20, :20] = np.nan
    tifffile.imwrite(src / "nan.tif", nan)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (src / "notes.tif").write_text("a text file with an image suffix\n")
    Image.fromarray((base * 200).astype(np.uint8)).save(src / "x.png")
    tifffile.imwrite(src / "x.tif", (base * 200).astype(np.uint8))
    Image.fromarray((base * 200).astype(np.uint8)).save(src / "slide.a.png")
    Image.fromarray((base * 200).astype(np.uint8)).save(src / "slide.b.png")
    rgba = np.stack([(base * 200).astype(np.uint8)] * 3 + [np.full((96, 96), 255, np.uint8)], -1)
    Image.fromarray(rgba).save(src / "rgba.png")
    before = digests(src)
    out = tmp_path_factory.mktemp("sts_out") / "out"
    proc = bundle("segment_then_segment", ["inference.json"], input=src, output_dir=out)
    return {"src": src, "out": out, "proc": proc, "before": before}


def mask(path: Path) -> np.ndarray:
    return (tifffile.imread(path) if path.suffix == ".tif" else np.asarray(Image.open(path))) > 0


def test_sts_batch_exit_code_summary_and_untouched_inputs(sts_run):
    proc = sts_run["proc"]
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "monai_fovea: 3 of 12 input(s) failed (listed above)"
    assert digests(sts_run["src"]) == sts_run["before"]


def test_sts_16_bit_png_is_read_with_its_real_range(sts_run):
    good = mask(sts_run["out"] / "good_mask.png")
    assert good.sum() > 0
    np.testing.assert_array_equal(mask(sts_run["out"] / "deep16_mask.png"), good)


def test_sts_float_tiff_is_read_with_its_real_range(sts_run):
    np.testing.assert_array_equal(mask(sts_run["out"] / "float_mask.tif"), mask(sts_run["out"] / "good_mask.png"))


def test_sts_blank_image_gives_an_empty_mask_and_a_warning(sts_run):
    assert mask(sts_run["out"] / "blank_mask.png").sum() == 0
    assert "is constant" in sts_run["proc"].stdout + sts_run["proc"].stderr


def test_sts_nan_region_is_refused_with_the_count(sts_run):
    line = failed_line(sts_run["proc"], sts_run["src"] / "nan.tif")
    assert "400 non-finite values" in line and "nan_policy" in line


def test_sts_nan_region_with_nan_policy_fill_segments_the_rest(sample, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    clean = tifffile.imread(sample("dsb2018_nuclei")["image"])[:256, :256].astype(np.float32)  # real nuclei
    nan = clean.copy()
    nan[:20, :20] = np.nan
    tifffile.imwrite(src / "clean.tif", clean)
    tifffile.imwrite(src / "nan.tif", nan)
    proc = bundle("segment_then_segment", ["inference.json"], input=src, output_dir=tmp_path / "out", nan_policy="fill")
    assert proc.returncode == 0, proc.stderr[-2000:]
    filled, good = mask(tmp_path / "out" / "nan_mask.tif"), mask(tmp_path / "out" / "clean_mask.tif")
    assert good.sum() > 0 and not filled[:20, :20].any()  # no answer where the image has none
    outside = np.ones_like(good)
    outside[:24, :24] = False
    a, b = filled & outside, good & outside
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95


def test_sts_corrupt_png_is_named(sts_run):
    failed_line(sts_run["proc"], sts_run["src"] / "broken.png")


def test_sts_text_file_with_tiff_suffix_is_named(sts_run):
    failed_line(sts_run["proc"], sts_run["src"] / "notes.tif")


def test_sts_same_stem_png_and_tif_get_distinct_names(sts_run):
    out = sts_run["out"]
    np.testing.assert_array_equal(mask(out / "x_png_mask.png"), mask(out / "good_mask.png"))
    np.testing.assert_array_equal(mask(out / "x_tif_mask.tif"), mask(out / "good_mask.png"))


def test_sts_dotted_names_keep_their_full_stem(sts_run):
    assert {"slide.a_mask.png", "slide.b_mask.png", "slide.a_boxes.json", "slide.b_boxes.json"} <= set(outputs(sts_run["out"]))


def test_sts_rgba_png_is_segmented_as_grey(sts_run):
    np.testing.assert_array_equal(mask(sts_run["out"] / "rgba_mask.png"), mask(sts_run["out"] / "good_mask.png"))


# ---------------------------------------------------------------------------------------------------------------
# segment_then_segment, 3D (NIfTI override)


@pytest.fixture(scope="module")
def sts3d_run(tmp_path_factory):
    from monai_fovea.apps.segment_then_segment import aal_structures_split

    src = tmp_path_factory.mktemp("sts3d_in")
    vol = (aal_structures_split("train_full")[0]["image"][0, :48, :48, :40] * 1000).astype(np.float32)
    write_nifti(vol.astype(np.int16), src / "good.nii.gz", np.eye(4))
    nan = vol.copy()
    nan[:8] = np.nan
    write_nifti(nan, src / "nan.nii.gz", np.eye(4))
    write_nifti(np.full((48, 48, 40), 7, np.int16), src / "constant.nii.gz", np.eye(4))
    write_nifti(vol[:, :, 0].astype(np.int16), src / "slice2d.nii.gz", np.eye(4))
    with gzip.open(src / "zeros.nii.gz", "wb") as f:  # a gzip file that is not a NIfTI
        f.write(b"\0" * 1000)
    before = digests(src)
    out = tmp_path_factory.mktemp("sts3d_out") / "out"
    proc = bundle("segment_then_segment", ["inference.json", "inference_3d.json"], input=src, output_dir=out)
    return {"src": src, "out": out, "proc": proc, "before": before}


def test_sts3d_batch_exit_code_summary_and_untouched_inputs(sts3d_run):
    assert sts3d_run["proc"].returncode == 1
    assert sts3d_run["proc"].stderr.strip().splitlines()[-1] == "monai_fovea: 3 of 5 input(s) failed (listed above)"
    assert digests(sts3d_run["src"]) == sts3d_run["before"]
    assert nib.load(sts3d_run["out"] / "good_mask.nii.gz").get_fdata().sum() > 0


def test_sts3d_nan_voxels_are_refused_with_the_count(sts3d_run):
    assert f"{8 * 48 * 40} non-finite values" in failed_line(sts3d_run["proc"], sts3d_run["src"] / "nan.nii.gz")


def test_sts3d_constant_volume_gives_an_empty_mask_and_a_warning(sts3d_run):
    assert nib.load(sts3d_run["out"] / "constant_mask.nii.gz").get_fdata().sum() == 0
    assert "is constant" in sts3d_run["proc"].stdout + sts3d_run["proc"].stderr


def test_sts3d_2d_nifti_is_named(sts3d_run):
    failed_line(sts3d_run["proc"], sts3d_run["src"] / "slice2d.nii.gz")


def test_sts3d_gzip_that_is_not_nifti_is_named(sts3d_run):
    failed_line(sts3d_run["proc"], sts3d_run["src"] / "zeros.nii.gz")


# ---------------------------------------------------------------------------------------------------------------
# foveation_wsi_segmentation


@pytest.fixture(scope="module")
def wsi_run(sample, tmp_path_factory):
    with tifffile.TiffFile(sample("cmu_slide")["image"]) as tif:
        tissue = tif.pages[0].asarray()[1300:1428, 900:1028]
    src = tmp_path_factory.mktemp("wsi_in")
    Image.fromarray(tissue).save(src / "tile8.png")
    tifffile.imwrite(src / "tile16.tif", tissue.astype(np.uint16) * 257, photometric="rgb")
    tifffile.imwrite(src / "tilefloat.tif", tissue.astype(np.float32) / 255, photometric="rgb")
    # a pyramidal slide without any resolution tag: its um/px is unknown
    with tifffile.TiffWriter(src / "nores.tif") as tw:
        tw.write(np.repeat(np.repeat(tissue, 40, 0), 40, 1), tile=(256, 256), photometric="rgb")
    (src / "notes.svs").write_text("a text file with a slide suffix\n")
    before = digests(src)
    out = tmp_path_factory.mktemp("wsi_out") / "out"
    proc = bundle("foveation_wsi_segmentation", ["inference.json"], input=src, output_dir=out)
    return {"src": src, "out": out, "proc": proc, "before": before}


def test_wsi_batch_exit_code_summary_and_untouched_inputs(wsi_run):
    assert wsi_run["proc"].returncode == 1
    assert wsi_run["proc"].stderr.strip().splitlines()[-1] == "monai_fovea: 2 of 5 input(s) failed (listed above)"
    assert digests(wsi_run["src"]) == wsi_run["before"]


def test_wsi_16_bit_and_float_tiles_are_read_with_their_real_range(wsi_run):
    ref = np.asarray(Image.open(wsi_run["out"] / "tile8_mask.png"))
    assert (ref == 2).sum() > 0 and (ref == 1).sum() > 0
    np.testing.assert_array_equal(np.asarray(Image.open(wsi_run["out"] / "tile16_mask.png")), ref)
    np.testing.assert_array_equal(np.asarray(Image.open(wsi_run["out"] / "tilefloat_mask.png")), ref)


def test_wsi_slide_without_resolution_is_refused_with_how_to_set_it(wsi_run):
    line = failed_line(wsi_run["proc"], wsi_run["src"] / "nores.tif")
    assert "default_mpp" in line


def test_wsi_text_file_with_slide_suffix_is_named(wsi_run):
    assert "cannot be opened as a slide" in failed_line(wsi_run["proc"], wsi_run["src"] / "notes.svs")


def test_wsi_kill_9_leaves_its_label_map_beside_the_output_and_the_rerun_removes_it(sample, tmp_path):
    """The disk-backed label map is a hidden temporary of the output folder (not $TMPDIR): after kill -9 it is
    there to be found, nothing stands under a final name half-written, and the re-run removes it and writes the
    same bytes as an uninterrupted run."""
    with tifffile.TiffFile(sample("cmu_slide")["image"]) as tif:
        crop = tif.pages[0].asarray()[1000:2024, 600:1624]
    src = tmp_path / "in"
    write_pyramidal_tiff(crop, src / "crop.tif", mpp=0.499, tile=256, levels=3)
    ref = tmp_path / "ref"
    assert bundle("foveation_wsi_segmentation", ["inference.json"], input=src, output_dir=ref).returncode == 0
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           str(BUNDLES / "foveation_wsi_segmentation" / "configs" / "inference.json"), "--input", str(src),
           "--output_dir", str(out), "--sw_batch_size", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and not (out.exists() and any(p.name.startswith(".crop_labelmap.tmp-") for p in out.iterdir())):
        time.sleep(0.02)
    time.sleep(0.5)  # mid-slide
    proc.kill()
    proc.wait()
    left = [p.name for p in out.iterdir()]
    assert any(n.startswith(".crop_labelmap.tmp-") for n in left), left  # findable beside the output
    for name in left:
        if not name.startswith("."):
            assert (out / name).read_bytes() == (ref / name).read_bytes()  # final names are complete files
    proc = bundle("foveation_wsi_segmentation", ["inference.json"], input=src, output_dir=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert digests(out) == digests(ref)  # the temporary is gone and the results are byte-identical
