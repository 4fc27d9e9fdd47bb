"""TiffFileReader: MONAI's ImageReader interface on tifffile, with the level asked for, its pixel size in µm and the
file's own dtype."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged, Spacingd

from monai_fovea.data import samples
from monai_fovea.data.io import write_pyramidal_tiff
from monai_fovea.data.readers import TiffFileReader, tiff_mpp


@pytest.fixture(scope="module")
def slide() -> str:
    return str(samples.fetch("cmu_slide")["image"])


def tifffile_level(path: str, level: int) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[level].asarray()


def test_sample_slide_levels_shapes_spacing_and_pixels(slide) -> None:
    level0 = LoadImage(reader=TiffFileReader(level=0), image_only=True, dtype=None)(slide)
    assert tuple(level0.shape) == (2967, 2220, 3) and level0.dtype == torch.uint8  # [H, W, C] as in the file
    np.testing.assert_allclose(level0.meta["spacing"], [0.499, 0.499])
    np.testing.assert_allclose(level0.pixdim.numpy(), [0.499, 0.499])
    assert level0.meta["original_channel_dim"] == -1 and level0.meta["level_count"] == 3
    assert level0.meta["level_shapes"] == [[2967, 2220], [1484, 1110], [742, 555]]
    level1 = LoadImage(reader=TiffFileReader(level=1), image_only=True, dtype=None)(slide)
    assert tuple(level1.shape) == (1484, 1110, 3)
    np.testing.assert_allclose(level1.meta["spacing"], [0.998, 0.998])  # the pyramid's 2x, not 2967 / 1484
    assert np.array_equal(level1.numpy(), tifffile_level(slide, 1))
    assert not np.array_equal(level1.numpy()[:700, :500], level0.numpy()[:700, :500])


def test_loadimaged_ensure_channel_first_and_spacingd(slide) -> None:
    load = Compose([LoadImaged("image", reader=TiffFileReader), EnsureChannelFirstd("image")])
    img = load({"image": slide})["image"]
    assert tuple(img.shape) == (3, 2967, 2220)
    assert np.array_equal(img[:, 100, 200].numpy(), tifffile_level(slide, 0)[100, 200].astype(np.float32))
    # the µm spacing drives MONAI's resampling: 0.499 -> 0.998 µm/px halves each side (ceil)
    resampled = Spacingd("image", pixdim=(0.998, 0.998))(load({"image": slide}))["image"]
    assert tuple(resampled.shape) == (3, 1484, 1110)
    np.testing.assert_allclose(resampled.pixdim.numpy(), [0.998, 0.998])


def test_reader_by_name_and_dotted_path(slide) -> None:
    from monai.transforms.io.array import SUPPORTED_READERS

    assert list(SUPPORTED_READERS)[0] == "tifffilereader"  # registered, at the lowest auto-selection priority
    by_name = LoadImaged("image", reader="TiffFileReader", level=2, image_only=True)({"image": slide})["image"]
    assert tuple(by_name.shape) == (742, 555, 3)
    dotted = LoadImaged("image", reader="monai_fovea.data.readers.TiffFileReader", level=2)({"image": slide})["image"]
    assert torch.equal(by_name, dotted)
    xy = LoadImage(reader=TiffFileReader(level=2, reverse_indexing=True), image_only=True)(slide)
    assert tuple(xy.shape) == (555, 742, 3) and torch.equal(xy, by_name.permute(1, 0, 2))


def test_uint16_grey_keeps_values_above_255(tmp_path) -> None:
    data = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 20).astype(np.uint16)  # up to 61420
    path = tmp_path / "grey16.tif"
    tifffile.imwrite(path, data, resolution=(1e4 / 0.25, 1e4 / 0.5), resolutionunit="CENTIMETER")
    arr, _ = (reader := TiffFileReader()).get_data(reader.read(path))
    assert arr.dtype == np.uint16 and np.array_equal(arr, data)
    img = LoadImage(reader=TiffFileReader(), image_only=True, dtype=None)(path)  # MONAI widens uint16 to int32
    assert int(img.max()) == 61420 and np.array_equal(img.numpy(), data)
    np.testing.assert_allclose(img.meta["spacing"], [0.5, 0.25])  # (y, x): YResolution, XResolution
    assert img.meta["original_channel_dim"] == "no_channel"
    item = Compose([LoadImaged("img", reader=TiffFileReader), EnsureChannelFirstd("img")])({"img": path})["img"]
    assert tuple(item.shape) == (1, 64, 48) and float(item.max()) == 61420.0


def test_uint16_pyramid_label_levels(tmp_path) -> None:
    labels = np.zeros((300, 200), np.uint16)
    labels[10:110, 20:60] = 1000
    path = write_pyramidal_tiff(labels, tmp_path / "labels.tif", mpp=0.25, tile=64, levels=2)
    lv1 = LoadImage(reader=TiffFileReader(level=1), image_only=True, dtype=None)(path)
    assert np.array_equal(lv1.numpy(), labels[::2, ::2])
    np.testing.assert_allclose(lv1.meta["spacing"], [0.5, 0.5])


def test_float32_tiff_and_inch_resolution(tmp_path) -> None:
    data = np.linspace(-3.5, 1e5, 30 * 40, dtype=np.float32).reshape(30, 40)
    path = tmp_path / "float.tiff"
    tifffile.imwrite(path, data, resolution=(25_400 / 2.0, 25_400 / 2.0), resolutionunit="INCH")
    arr, meta = (reader := TiffFileReader()).get_data(reader.read(path))
    assert arr.dtype == np.float32 and np.array_equal(arr, data)
    np.testing.assert_allclose(meta["spacing"], [2.0, 2.0])


def test_aperio_description_no_resolution_and_planar_rgb(tmp_path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (3, 20, 30), dtype=np.uint8)
    aperio = tmp_path / "a.svs"
    tifffile.imwrite(aperio, rgb, photometric="rgb", planarconfig="separate",
                     description="Aperio Image Library v12 |AppMag = 20|MPP = 0.2520|Filename = x")
    with tifffile.TiffFile(aperio) as tif:
        assert tiff_mpp(tif) == (0.252, 0.252)
    img = Compose([LoadImaged("i", reader=TiffFileReader, dtype=None), EnsureChannelFirstd("i")])({"i": aperio})["i"]
    assert img.meta["original_channel_dim"] == 0  # planar: samples first
    assert np.array_equal(img.numpy(), rgb)
    np.testing.assert_allclose(img.pixdim.numpy(), [0.252, 0.252])
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((5, 6), np.uint8))
    meta = LoadImage(reader=TiffFileReader(), image_only=True)(plain).meta
    assert "spacing" not in meta and np.array_equal(np.asarray(meta["affine"]), np.eye(3))


def test_batches_collate(slide, tmp_path) -> None:
    loader = DataLoader(Dataset([{"image": slide}] * 2, Compose([
        LoadImaged("image", reader=TiffFileReader, level=2), EnsureChannelFirstd("image")])), batch_size=2)
    batch = next(iter(loader))["image"]
    assert tuple(batch.shape) == (2, 3, 742, 555)


def test_corrupt_file_and_missing_level_are_named(tmp_path, slide) -> None:
    bad = tmp_path / "broken_slide.tif"
    bad.write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(ValueError, match="broken_slide.tif"):
        TiffFileReader().read(bad)
    with pytest.raises(RuntimeError, match="broken_slide.tif"):
        LoadImage(reader=TiffFileReader())(bad)
    with pytest.raises(ValueError, match=r"level=7 does not exist in .*3 levels"):
        TiffFileReader(level=7).get_data(TiffFileReader(level=7).read(slide))
    with pytest.raises(ValueError, match="level"):
        TiffFileReader(level=-1)
    assert TiffFileReader().verify_suffix(["a.tif", "b.svs"]) and not TiffFileReader().verify_suffix("a.png")
