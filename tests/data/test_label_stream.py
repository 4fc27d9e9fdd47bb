"""BandedLabelMap: bands written in order give the same pyramidal label TIFF as write_pyramidal_tiff."""

import numpy as np
import pytest
import tifffile

from monai_fovea.data.io import write_pyramidal_tiff
from monai_fovea.data.label_stream import BandedLabelMap


def test_bands_to_tiff_equal_write_pyramidal_tiff(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 301, 530  # odd sizes: partial edge tiles and odd reduced levels
    full = np.full((h, w), 7, np.uint8)
    m = BandedLabelMap(tmp_path / "labels.u8", (h, w), fill=7)
    # bands of 64 rows, a skipped band (rows 64..128 stay the fill value), a short last band
    for top in (0, 128, 192, 256):
        bottom = min(top + 64, h)
        band = m.start_band(top, bottom)
        assert band.shape == (bottom - top, w) and (band == 7).all()
        values = rng.integers(0, 4, (bottom - top, w), dtype=np.uint8)
        band[:] = values
        full[top:bottom] = values
    m.finish()
    np.testing.assert_array_equal(m.rows([0, 100, 300], step=2), full[[0, 100, 300], ::2])
    ours = m.write_tiff(tmp_path / "ours.tif", mpp=(0.5, 0.25), tile=128)
    ref = write_pyramidal_tiff(full, tmp_path / "ref.tif", mpp=(0.5, 0.25), tile=128, label=True, compression="lzw")
    m.close()
    with tifffile.TiffFile(ours) as a, tifffile.TiffFile(ref) as b:
        assert len(a.pages) == len(b.pages) == 4  # 530 -> 265 -> 133 -> 67 px wide (fits a 128-px tile)
        for pa, pb in zip(a.pages, b.pages):
            np.testing.assert_array_equal(pa.asarray(), pb.asarray())
            for tag in ("XResolution", "YResolution", "ResolutionUnit", "NewSubfileType", "Compression", "TileWidth"):
                assert pa.tags[tag].value == pb.tags[tag].value, tag
    np.testing.assert_array_equal(tifffile.imread(ours), full)


def test_bands_must_come_in_order(tmp_path):
    m = BandedLabelMap(tmp_path / "labels.u8", (10, 4))
    m.start_band(4, 8)
    with pytest.raises(ValueError, match="top to bottom"):
        m.start_band(2, 6)
    m.close()
