"""Tiles for the WSI bundle are read with their real range, whatever the file type says."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from monai_fovea.apps.wsi_pipeline import is_tile, read_tile


def test_16_bit_grey_png_is_scaled_by_its_type_not_clipped(tmp_path):
    grey = (np.arange(60 * 100).reshape(60, 100) * 10).astype(np.uint16)  # up to 59 990
    Image.fromarray(grey).save(tmp_path / "g16.png")
    rgb = read_tile(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (60, 100, 3)
    np.testing.assert_array_equal(rgb[..., 0], np.round(grey / 257.0).astype(np.uint8))
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_float_tiff_in_unit_range_and_uint8_png_round_trip(tmp_path):
    rgb8 = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb8).save(tmp_path / "t.png")
    tifffile.imwrite(tmp_path / "t.tif", rgb8.astype(np.float32) / 255, photometric="rgb")
    np.testing.assert_array_equal(read_tile(tmp_path / "t.png"), rgb8)
    np.testing.assert_array_equal(read_tile(tmp_path / "t.tif"), rgb8)
    assert is_tile(tmp_path / "t.png") and is_tile(tmp_path / "t.tif")


def test_nan_tile_and_unreadable_file_name_the_file(tmp_path):
    bad = np.zeros((8, 8, 3), np.float32)
    bad[0, 0, 0] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad, photometric="rgb")
    with pytest.raises(ValueError, match=r"nan\.tif: 1 pixel values are NaN or infinite"):
        read_tile(tmp_path / "nan.tif")
    (tmp_path / "x.png").write_text("no image")
    with pytest.raises(ValueError, match=r"x\.png: cannot be read as an image"):
        read_tile(tmp_path / "x.png")
