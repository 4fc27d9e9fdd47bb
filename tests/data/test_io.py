"""monai_fovea.data.io: input listing, atomic writes, NIfTI / pyramidal TIFF / PNG writers (exact round trips)."""

from __future__ import annotations

import numpy as np
import pytest

from monai_fovea.data import io


# ----------------------------------------------------------------------------------------------- list_inputs
def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_list_inputs_file_folder_glob(tmp_path):
    a = _touch(tmp_path / "b.nii.gz")
    b = _touch(tmp_path / "a.TIF")
    c = _touch(tmp_path / "sub" / "c.tif")
    _touch(tmp_path / ".hidden.tif")
    _touch(tmp_path / "notes.txt")

    assert io.list_inputs(a) == [a]
    assert io.list_inputs(str(a), suffixes=".nii.gz") == [a]
    # folder: direct, non-hidden files, sorted; suffix filter is case-insensitive, dot optional
    assert io.list_inputs(tmp_path) == [b, a, tmp_path / "notes.txt"]
    assert io.list_inputs(tmp_path, suffixes=[".tif"]) == [b]
    assert io.list_inputs(tmp_path, suffixes=["nii.gz", "tif"]) == [b, a]
    # glob, recursive with **
    assert io.list_inputs(str(tmp_path / "**" / "*.tif")) == [c]
    assert io.list_inputs(str(tmp_path / "*.*"), suffixes=[".tif", ".txt"]) == [b, tmp_path / "notes.txt"]


def test_list_inputs_no_match_names_the_argument(tmp_path):
    _touch(tmp_path / "a.txt")
    with pytest.raises(FileNotFoundError, match=r"no input files with suffixes \['.png'\] match path=.*" + tmp_path.name):
        io.list_inputs(tmp_path, suffixes=[".png"])
    pattern = str(tmp_path / "*.nii")
    with pytest.raises(FileNotFoundError, match=r"no input files match path='.*\*\.nii'"):
        io.list_inputs(pattern)
    missing = tmp_path / "missing.tif"
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        io.list_inputs(missing)
    with pytest.raises(FileNotFoundError, match="a.txt"):
        io.list_inputs(tmp_path / "a.txt", suffixes=".tif")


# ---------------------------------------------------------------------------------------------- atomic_output
def test_atomic_output_renames_on_success(tmp_path):
    target = tmp_path / "out" / "result.nii.gz"
    with io.atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert tmp.name.startswith(".") and tmp.name.endswith(".nii.gz")  # hidden, keeps the compound suffix
        tmp.write_bytes(b"done")
        assert not target.exists()
    assert target.read_bytes() == b"done"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.nii.gz"]


def test_atomic_output_removes_temp_on_error_and_leaves_no_file(tmp_path):
    target = tmp_path / "result.tif"
    seen = {}
    with pytest.raises(RuntimeError, match="boom"):
        with io.atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            seen["tmp"] = tmp
            raise RuntimeError("boom")
    assert not seen["tmp"].exists()
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_keeps_previous_version_on_error(tmp_path):
    target = tmp_path / "result.png"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        with io.atomic_output(target) as tmp:
            tmp.write_bytes(b"new-but-broken")
            raise ValueError("fail")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.png"]


def test_atomic_output_nothing_written(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with io.atomic_output(tmp_path / "x.bin"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_writer_failure_leaves_no_file(tmp_path):
    target = tmp_path / "bad.tif"
    with pytest.raises(ValueError, match="JPEG is lossy"):
        io.write_pyramidal_tiff(np.zeros((64, 64), np.uint8), target, mpp=1.0, compression="jpeg", label=True)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ write_nifti
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_write_nifti_round_trips_array_and_affine(tmp_path, suffix, dtype):
    import nibabel as nib

    rng = np.random.default_rng(0)
    arr = (rng.random((7, 5, 3)) * 100 - (50 if dtype != np.uint8 else 0)).astype(dtype)
    # a rotated, anisotropic affine with float32-representable entries (NIfTI stores float32)
    affine = np.array([[0, -0.5, 0, 90.25], [0.75, 0, 0, -126.5], [0, 0, 1.5, -72.0], [0, 0, 0, 1]], dtype=np.float64)
    path = io.write_nifti(arr, tmp_path / f"img{suffix}", affine)
    img = nib.load(path)
    assert np.array_equal(np.asarray(img.dataobj), arr)
    assert img.get_data_dtype() == dtype
    assert np.array_equal(img.affine, affine)
    assert np.allclose(img.get_qform(), affine, atol=1e-6)  # quaternion: exact up to float32 rounding
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    assert img.header.get_zooms() == (0.75, 0.5, 1.5)
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert [p.name for p in tmp_path.iterdir()] == [f"img{suffix}"]


def test_write_nifti_bool_int64_and_torch(tmp_path):
    import nibabel as nib
    import torch

    mask = np.zeros((4, 4, 4), bool)
    mask[1:3, 2, 3] = True
    img = nib.load(io.write_nifti(torch.from_numpy(mask), tmp_path / "m.nii.gz", np.eye(4)))
    assert img.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(img.dataobj), mask.astype(np.uint8))
    lab = np.arange(64, dtype=np.int64).reshape(4, 4, 4) * 1000
    img = nib.load(io.write_nifti(lab, tmp_path / "l.nii", np.eye(4)))
    assert img.get_data_dtype() == np.int32 and np.array_equal(np.asarray(img.dataobj), lab)


def test_write_nifti_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="affine must be 4x4"):
        io.write_nifti(np.zeros((2, 2, 2)), tmp_path / "a.nii", np.eye(3))
    with pytest.raises(ValueError, match=r"path must end in \.nii"):
        io.write_nifti(np.zeros((2, 2, 2)), tmp_path / "a.nrrd", np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_write_nifti_is_deterministic(tmp_path):
    arr = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    a = io.write_nifti(arr, tmp_path / "a.nii.gz", np.eye(4)).read_bytes()
    b = io.write_nifti(arr, tmp_path / "b.nii.gz", np.eye(4)).read_bytes()
    assert a == b  # no gzip timestamp / file name


# --------------------------------------------------------------------------------------- write_pyramidal_tiff
def _label_mask(h=600, w=700):
    """A label mask with structure at every scale: blocks of labels plus single-pixel speckles."""
    rng = np.random.default_rng(1)
    lab = np.zeros((h, w), np.uint8)
    for k in range(1, 9):
        y, x = rng.integers(0, h - 80), rng.integers(0, w - 80)
        lab[y : y + rng.integers(5, 80), x : x + rng.integers(5, 80)] = k
    lab[rng.integers(0, h, 500), rng.integers(0, w, 500)] = 200
    return lab


def test_pyramid_level_shapes():
    assert io.pyramid_level_shapes(2967, 2220, 3) == [(2967, 2220), (1484, 1110), (742, 555)]
    assert io.pyramid_level_shapes(600, 700, 2) == [(600, 700), (300, 350)]


def test_write_pyramidal_tiff_label_round_trip_tifffile(tmp_path):
    import tifffile

    lab = _label_mask(601, 703)  # odd sizes: ceil at each level
    path = io.write_pyramidal_tiff(lab, tmp_path / "mask.tif", mpp=0.25, levels=3)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 3
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(601, 703), (301, 352), (151, 176)]
        assert np.array_equal(levels[0].asarray(), lab)  # exact at level 0
        assert np.array_equal(levels[1].asarray(), lab[::2, ::2])  # nearest 2x
        assert np.array_equal(levels[2].asarray(), lab[::4, ::4])
        for k, page in enumerate(tif.pages):
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
            assert page.compression == 5  # LZW, lossless
            assert page.dtype == np.uint8
            assert int(page.tags["NewSubfileType"].value) == (1 if k else 0)
        p0 = tif.pages[0]
        assert int(p0.tags["ResolutionUnit"].value) == 3  # centimetre
        xres = p0.tags["XResolution"].value
        yres = p0.tags["YResolution"].value
        assert 1e4 / (xres[0] / xres[1]) == pytest.approx(0.25, rel=1e-6)
        assert 1e4 / (yres[0] / yres[1]) == pytest.approx(0.25, rel=1e-6)
        x1 = tif.pages[1].tags["XResolution"].value
        assert 1e4 / (x1[0] / x1[1]) == pytest.approx(0.25 * 703 / 352, rel=1e-6)


def test_write_pyramidal_tiff_label_openslide_and_cucim(tmp_path):
    openslide = pytest.importorskip("openslide")
    lab = _label_mask()
    path = io.write_pyramidal_tiff(lab, tmp_path / "mask.tif", mpp=0.5, levels=3)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_count == 3
        assert slide.level_dimensions == ((700, 600), (350, 300), (175, 150))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.5)
        region0 = np.asarray(slide.read_region((0, 0), 0, (700, 600)))
        assert np.array_equal(region0[..., 0], lab)  # single channel read as RGBA, exact for uint8 labels
        region1 = np.asarray(slide.read_region((0, 0), 1, (350, 300)))
        assert np.array_equal(region1[..., 0], lab[::2, ::2])
    cucim = pytest.importorskip("cucim")
    img = cucim.CuImage(str(path))
    assert img.resolutions["level_count"] == 3
    assert tuple(map(tuple, img.resolutions["level_dimensions"])) == ((700, 600), (350, 300), (175, 150))
    assert img.spacing()[:2] == pytest.approx([0.5, 0.5])
    assert list(img.spacing_units()[:2]) == ["micrometer", "micrometer"]
    region1 = np.asarray(img.read_region((0, 0), (350, 300), level=1))
    assert np.array_equal(region1[..., 0], lab[::2, ::2])


def test_write_pyramidal_tiff_uint16_labels(tmp_path):
    import tifffile

    lab = (_label_mask(300, 300).astype(np.uint16) * 300)
    path = io.write_pyramidal_tiff(lab, tmp_path / "inst.tif", mpp=1.0, levels=2)
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert levels[0].dtype == np.uint16
        assert np.array_equal(levels[0].asarray(), lab) and np.array_equal(levels[1].asarray(), lab[::2, ::2])


def test_write_pyramidal_tiff_rgb_jpeg(tmp_path):
    import tifffile

    openslide = pytest.importorskip("openslide")
    yy, xx = np.mgrid[0:512, 0:768]
    rgb = np.stack([(xx // 3) % 256, (yy // 2) % 256, ((xx + yy) // 5) % 256], -1).astype(np.uint8)
    path = io.write_pyramidal_tiff(rgb, tmp_path / "slide.tif", mpp=(0.5, 0.5))  # levels=None: until it fits a tile
    with tifffile.TiffFile(path) as tif:
        assert [lv.shape for lv in tif.series[0].levels] == [(512, 768, 3), (256, 384, 3), (128, 192, 3)]
        assert all(p.compression == 7 for p in tif.pages)  # JPEG
        level0 = tif.series[0].levels[0].asarray()
        level1 = tif.series[0].levels[1].asarray()
    # JPEG q90 of a smooth image: small error; level 1 is the 2x2 block mean
    assert np.abs(level0.astype(int) - rgb).mean() < 2.0
    mean2 = rgb.reshape(256, 2, 384, 2, 3).astype(float).mean((1, 3))
    assert np.abs(level1 - mean2).mean() < 2.0
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_count == 3
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert np.abs(np.asarray(slide.read_region((0, 0), 0, (768, 512)))[..., :3].astype(int) - level0).max() <= 1


def test_write_pyramidal_tiff_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="dtype must be uint8 or uint16"):
        io.write_pyramidal_tiff(np.zeros((64, 64), np.float32), tmp_path / "a.tif", mpp=1.0)
    with pytest.raises(ValueError, match="must be \\[H, W\\]"):
        io.write_pyramidal_tiff(np.zeros((4, 64, 64), np.uint8), tmp_path / "a.tif", mpp=1.0)
    with pytest.raises(ValueError, match="mpp must be positive"):
        io.write_pyramidal_tiff(np.zeros((64, 64), np.uint8), tmp_path / "a.tif", mpp=0)
    with pytest.raises(ValueError, match="levels=9 is invalid"):
        io.write_pyramidal_tiff(np.zeros((64, 64), np.uint8), tmp_path / "a.tif", mpp=1.0, levels=9)
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------------------------- write_png
@pytest.mark.parametrize(
    "arr",
    [
        np.arange(256, dtype=np.uint8).reshape(16, 16),
        (np.arange(1024, dtype=np.uint16) * 64).reshape(32, 32),
        np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8),
        np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8),
    ],
    ids=["gray8", "gray16", "rgb", "rgba"],
)
def test_write_png_round_trip(tmp_path, arr):
    from PIL import Image

    path = io.write_png(arr, tmp_path / "x.png")
    back = np.asarray(Image.open(path))
    assert back.dtype == arr.dtype and np.array_equal(back, arr)


def test_write_png_bool_and_bad_input(tmp_path):
    from PIL import Image

    mask = np.eye(4, dtype=bool)
    assert np.array_equal(np.asarray(Image.open(io.write_png(mask, tmp_path / "m.png"))), mask.astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="must be uint8"):
        io.write_png(np.zeros((4, 4, 3), np.float32), tmp_path / "f.png")
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_save_state_dict_round_trips_a_plain_cpu_state_dict(tmp_path):
    import torch

    from monai_fovea.data.io import save_state_dict

    net = torch.nn.Conv2d(2, 3, 3)
    out = save_state_dict(net, tmp_path / "models" / "model.pt")
    loaded = torch.load(out, map_location="cpu", weights_only=True)
    assert list(loaded) == ["weight", "bias"]
    for key, value in net.state_dict().items():
        assert loaded[key].device.type == "cpu"
        assert torch.equal(loaded[key], value)
    assert [p.name for p in out.parent.iterdir()] == ["model.pt"]  # no temporary file left behind


def test_save_state_dict_interrupted_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch

    from monai_fovea.data.io import save_state_dict

    path = save_state_dict(torch.nn.Linear(2, 1), tmp_path / "model.pt")
    before = path.read_bytes()

    def killed_mid_write(obj, f):  # writes part of a checkpoint, then dies as a killed run would
        open(f, "wb").write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_state_dict(torch.nn.Linear(2, 1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_file_stem_drops_compound_extensions():
    from monai_fovea.data.io import file_stem

    assert file_stem("/d/case01.nii.gz") == "case01" and file_stem("CASE.NII.GZ") == "CASE"
    assert file_stem("a.b.nii") == "a.b" and file_stem("slide.ome.tif") == "slide" and file_stem("README") == "README"
