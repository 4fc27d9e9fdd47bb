"""Pyramid-aware multi-scale WSI reading (monai_fovea.data.wsi) on real slides read by the real backends."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from monai_fovea.data.io import write_pyramidal_tiff
from monai_fovea.data.wsi import PyramidSlide, cell_means, read_multiscale, select_level, tissue_mask
from monai_fovea.transforms.foveation.functional import multiscale_patches

pytest.importorskip("openslide", reason="openslide-python is needed for the openslide backend")
pytest.importorskip("zarr", reason="zarr is needed for tile-wise tifffile reads")

BACKENDS = ["openslide", "tifffile"]
try:  # cuCIM is an optional extra (GPU package that also reads on CPU)
    import cucim  # noqa: F401

    BACKENDS.append("cucim")
except ImportError:  # pragma: no cover - environment without the cucim extra
    pass


@pytest.fixture(scope="module")
def cmu(sample):
    """The sample H&E pyramid (3 levels, JPEG tiles) and its level-0 pixels decoded by tifffile."""
    path = sample("cmu_slide")["image"]
    with tifffile.TiffFile(path) as tif:
        level0 = tif.pages[0].asarray()
    return path, level0


@pytest.fixture(scope="module")
def lossless(tmp_path_factory):
    """A lossless (LZW) 3-level pyramid of random RGB noise with odd sizes, and its level-0 array.

    Noise makes any one-pixel misregistration visible; odd sizes give level ratios that are not exactly 2.
    """
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (301, 245, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("wsi") / "noise.tif"
    write_pyramidal_tiff(img, path, mpp=0.5, tile=64, levels=3, compression="lzw")
    return path, img


def test_select_level_hand_cases():
    ds = [(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)]
    assert select_level(ds, (64, 64), (64, 64)) == 0
    assert select_level(ds, (127, 127), (64, 64)) == 0  # level 1 would have 63.5 < 64 px
    assert select_level(ds, (128, 128), (64, 64)) == 1
    assert select_level(ds, (255, 255), (64, 64)) == 1
    assert select_level(ds, (4096, 4096), (64, 64)) == 2
    assert select_level(ds, (32, 32), (64, 64)) == 0  # upsampling reads level 0
    assert select_level(ds, (256, 128), (64, 64)) == 1  # the less downsampled axis decides


@pytest.mark.parametrize("backend", BACKENDS)
def test_level_regions_and_snapped_downsamples(lossless, backend):
    path, img = lossless
    with PyramidSlide(path, backend) as slide:
        assert slide.level_shapes == [(301, 245), (151, 123), (76, 62)]
        assert slide.downsamples == [(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)]  # 301/151 = 1.993 snapped to 2
        assert slide.mpp == pytest.approx((0.5, 0.5), rel=1e-4)
        with tifffile.TiffFile(path) as tif:
            for level in range(3):
                ref = tif.pages[level].asarray()
                got = slide.read_region(level, 10, 7, 40, 30).transpose(1, 2, 0)
                if backend == "openslide" and level > 0:
                    # OpenSlide maps level-0 locations by its mean downsample (1.99 here, not 2) and renders the
                    # few-hundredths-of-a-pixel offset by interpolation: close, not equal, on this noise image.
                    diff = np.abs(got.astype(int) - ref[10:50, 7:37])
                    assert diff.mean() <= 4 and diff.max() <= 32
                else:
                    np.testing.assert_array_equal(got, ref[10:50, 7:37])


@pytest.mark.parametrize("backend", BACKENDS)
def test_edges_padded_identically(lossless, backend):
    path, img = lossless
    with PyramidSlide(path, backend) as slide:
        # zeros: the part outside the slide is 0, the part inside is the slide
        got = slide.read_region(0, -5, 240, 12, 10)
        expected = np.zeros((3, 12, 10), np.uint8)
        expected[:, 5:, :5] = img[:7, 240:245].transpose(2, 0, 1)
        np.testing.assert_array_equal(got, expected)
        # entirely outside the slide (negative and beyond the end)
        assert (slide.read_region(0, -50, -50, 8, 8, padding_mode="constant", pad_value=200) == 200).all()
        assert (slide.read_region(0, 400, 300, 8, 8) == 0).all()
        # border: nearest edge pixel, also for a region entirely outside
        got = slide.read_region(0, -3, -2, 5, 4, padding_mode="border")
        rows, cols = np.clip(np.arange(-3, 2), 0, 300), np.clip(np.arange(-2, 2), 0, 244)
        np.testing.assert_array_equal(got, img[rows[:, None], cols[None, :]].transpose(2, 0, 1))
        got = slide.read_region(0, 310, 250, 3, 3, padding_mode="border")
        assert (got == img[300, 244][:, None, None]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_centres_hit_level0_pixels_like_multiscale_patches(lossless, backend):
    """The FoV == output scale is the exact crop at the centre, including across the slide edges."""
    path, img = lossless
    centers = np.array([[150, 120], [0, 0], [3, 244], [300, 1], [-4, 100]])
    got = read_multiscale(path, centers, [16, 15], 16, backend=backend, padding_mode="zeros")
    chw = torch.from_numpy(img).permute(2, 0, 1)
    ref = multiscale_patches(chw, centers, [16], 16, padding_mode="zeros")
    assert got.shape == (5, 2, 3, 16, 16)
    torch.testing.assert_close(got[:, :1], ref, rtol=0, atol=0)
    # hand-checked pixel: centre (150, 120), output 16 -> first pixel (142, 112)
    assert torch.equal(got[0, 0, :, 0, 0], torch.tensor(img[142, 112], dtype=torch.float32))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "openslide"])
def test_pyramid_read_equals_level0_block_mean(lossless, backend):
    """On a lossless pyramid of 2x2 block means, a FoV read from level k equals the level-0 read box-reduced.

    Tolerance 0.5 grey level: the pyramid rounds each block mean to an integer. Centres are chosen so each FoV
    starts on the level's pixel grid (multiple of 2**k), where the two reads cover exactly the same pixels.
    OpenSlide is left out: on this odd-sized pyramid its mean downsample is 1.993, not 2, and it interpolates
    the resulting sub-pixel offset (see test_level_regions_and_snapped_downsamples and the sample-slide test).
    """
    path, img = lossless
    centers = np.array([[64, 64], [128, 96], [200, 40]])  # FoV 32 at level 1 and 64 at level 2 start on the grid
    pyr = read_multiscale(path, centers, [16, 32, 64], 16, backend=backend)
    base = read_multiscale(path, centers, [16, 32, 64], 16, backend=backend, level_selection="base")
    torch.testing.assert_close(pyr[:, 0], base[:, 0], rtol=0, atol=0)
    full = read_multiscale(path, centers, [32, 64], [32, 64][0], backend=backend, level_selection="base")
    lvl1_ref = F.avg_pool2d(full[:, 0], 2)
    assert (pyr[:, 1] - lvl1_ref).abs().max() <= 0.5
    full64 = read_multiscale(path, centers, [64], 64, backend=backend, level_selection="base")[:, 0]
    lvl2_ref = F.avg_pool2d(F.avg_pool2d(full64, 2).add(0.0), 2)  # two rounded 2x2 means vs one exact 4x4 mean
    assert (pyr[:, 2] - lvl2_ref).abs().max() <= 1.0


def test_three_backends_agree_on_sample(cmu):
    """The sample pyramid (JPEG): tifffile and cuCIM decode identical patches; OpenSlide equal at level 0.

    OpenSlide addresses reduced levels in level-0 coordinates divided by its mean downsample (1.9997 here) and
    renders the resulting sub-pixel offset by interpolation, so at level 1 it differs by a fraction of a pixel:
    measured mean |Δ| ~ 2 grey levels on tissue; the stated tolerance is mean |Δ| ≤ 4 and PSNR ≥ 30 dB.
    """
    path, _ = cmu
    rng = np.random.default_rng(0)
    centers = np.stack([rng.integers(-40, 3007, 24), rng.integers(-40, 2260, 24)], 1)
    sizes = [64, 128, 256, 512]
    reads = {b: read_multiscale(path, centers, sizes, 64, backend=b) for b in BACKENDS}
    ref = reads["tifffile"]
    assert ref.shape == (24, 4, 3, 64, 64)
    if "cucim" in reads:
        torch.testing.assert_close(reads["cucim"], ref, rtol=0, atol=0)
    osl = reads["openslide"]
    torch.testing.assert_close(osl[:, 0], ref[:, 0], rtol=0, atol=0)  # level 0: same pixels, same JPEG decoder
    diff = osl - ref
    assert diff.abs().mean() <= 4.0
    psnr = 10 * torch.log10(255.0**2 / diff.pow(2).mean().clamp_min(1e-9))
    assert psnr >= 30.0


def test_pyramid_read_close_to_level0_resize_on_sample(cmu):
    """Pyramid-aware read vs level-0 read + antialiased resize on the JPEG sample, tissue-rich centres.

    The two differ by the pyramid's own filter (2x2 box per level) vs bilinear antialiasing and by JPEG
    re-compression of each level; stated tolerance: PSNR ≥ 25 dB per scale (measured ~28-31 dB).
    """
    path, level0 = cmu
    centers = np.array([[1200, 1000], [1600, 800], [2000, 1400], [800, 1200]])
    sizes = [128, 256, 512]
    pyr = read_multiscale(path, centers, sizes, 64, backend="tifffile")
    base = read_multiscale(path, centers, sizes, 64, backend="tifffile", level_selection="base")
    for d in range(len(sizes)):
        mse = (pyr[:, d] - base[:, d]).pow(2).mean()
        assert 10 * torch.log10(255.0**2 / mse) >= 25.0, f"scale {d}"
    # and the level-0 read itself is the level-0 array, resized
    c = centers[0]
    crop = torch.from_numpy(level0[c[0] - 256 : c[0] + 256, c[1] - 256 : c[1] + 256]).permute(2, 0, 1)[None].float()
    ref = F.interpolate(crop, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)[0]
    torch.testing.assert_close(base[0, 2], ref, rtol=0, atol=1e-3)


def test_merged_and_single_reads_agree(lossless):
    path, _ = lossless
    centers = np.array([[40, 40], [44, 60], [290, 230]])
    merged = read_multiscale(path, centers, [8, 16, 40], 8, backend="tifffile", merge_reads=1e9)
    single = read_multiscale(path, centers, [8, 16, 40], 8, backend="tifffile", merge_reads=0)
    torch.testing.assert_close(merged, single, rtol=0, atol=0)


def test_tissue_mask_finds_the_stained_square(tmp_path):
    img = np.full((256, 320, 3), 240, np.uint8)  # glass: bright grey
    img[64:192, 96:224] = (180, 80, 150)  # H&E-like pink/purple tissue
    path = tmp_path / "square.tif"
    write_pyramidal_tiff(img, path, mpp=1.0, tile=64, levels=3, compression="lzw")
    with PyramidSlide(path, "tifffile") as slide:
        mask, ds = tissue_mask(slide, max_size=100)  # level 2: 64 x 80
    assert ds == (4.0, 4.0) and mask.shape == (64, 80)
    expected = np.zeros((64, 80), bool)
    expected[16:48, 24:56] = True
    np.testing.assert_array_equal(mask, expected)


def test_bad_arguments_are_named(lossless, tmp_path):
    path, _ = lossless
    with pytest.raises(ValueError, match="backend"):
        PyramidSlide(path, backend="pillow")
    with pytest.raises(FileNotFoundError, match="path"):
        PyramidSlide(tmp_path / "missing.tif")
    with pytest.raises(ValueError, match="centers"):
        read_multiscale(path, np.zeros((3, 3)), [8], 8, backend="tifffile")
    with pytest.raises(ValueError, match="output_size"):
        read_multiscale(path, [[5, 5]], [8], 0, backend="tifffile")
    with pytest.raises(ValueError, match="level_selection"):
        read_multiscale(path, [[5, 5]], [8], 8, backend="tifffile", level_selection="finest")
    with pytest.raises(ValueError, match="padding_mode"):
        read_multiscale(path, [[5, 5]], [8], 8, backend="tifffile", padding_mode="wrap")


@pytest.mark.parametrize("band_cells", [1, 16])
def test_cell_means_equal_level0_block_means(lossless, band_cells):
    """The head's low-resolution map read from level 2 (4x) equals 8x8 means of level 0 (rounding of the stored
    levels: < 1 grey level). The last row/column of cells (partial: the slide is 301 x 245) is averaged from
    edge-replicated pyramid pixels, so only full cells are compared exactly."""
    path, img = lossless
    with PyramidSlide(path, "tifffile") as slide:
        got = cell_means(slide, 8, band_cells=band_cells)
    ref = F.avg_pool2d(torch.from_numpy(img).permute(2, 0, 1).float()[None], 8, ceil_mode=True)[0]
    assert got.shape == ref.shape == (3, 38, 31)
    assert (got[:, :37, :30] - ref[:, :37, :30]).abs().max() < 1.0
    assert (got[:, 37:, :] - ref[:, 37:, :]).abs().max() < 40  # partial cells (measured max 23): close, not equal
    assert (got[:, :, 30:] - ref[:, :, 30:]).abs().max() < 40


def _fractional_means_reference(img: np.ndarray, cell: float) -> np.ndarray:
    """Hand rule: cell i covers level-0 rows/cols [round(i * cell), round((i + 1) * cell)) (halves rounded up),
    clipped to the image; the plain numpy mean of those pixels, [3, gh, gw]."""
    def bounds(size: int) -> list[tuple[int, int]]:
        n = int(np.ceil(size / cell))
        return [(int(np.floor(i * cell + 0.5)), min(size, int(np.floor((i + 1) * cell + 0.5)))) for i in range(n)]

    rows, cols = bounds(img.shape[0]), bounds(img.shape[1])
    return np.array([[img[r0:r1, c0:c1].reshape(-1, 3).mean(0) for c0, c1 in cols] for r0, r1 in rows]).transpose(2, 0, 1)


@pytest.mark.parametrize("band_cells", [1, 16])
def test_fractional_cell_means_are_area_means(lossless, band_cells):
    """A network run at another µm/px than level 0 has fractional level-0 cells (12.5 px here). Cells of fewer
    than 8 x 4 level-0 px are averaged at level 0: exactly the hand-computed means of the rounded bounds."""
    path, img = lossless
    with PyramidSlide(path, "tifffile") as slide:
        got = cell_means(slide, 12.5, band_cells=band_cells)
    ref = _fractional_means_reference(img, 12.5)
    assert got.shape == ref.shape == (3, 25, 20)  # ceil(301 / 12.5) = 25 (24.08), ceil(245 / 12.5) = 20 (19.6)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-3)


def test_fractional_cell_means_from_a_coarse_level(lossless):
    """Cells of 34.5 px hold >= 8 pixels of level 2 (4x): read there, bounds rounded to its 4-px grid, so each
    edge moves by up to 2 level-0 px against the level-0 reference (measured: max 2.8, mean 0.6 grey levels). A
    cell misregistered by one (its neighbour's mean) is off by mean 2.5, max 9.7 on this noise."""
    path, img = lossless
    with PyramidSlide(path, "tifffile") as slide:
        got = cell_means(slide, (34.5, 34.5)).numpy()
    ref = _fractional_means_reference(img, 34.5)
    assert got.shape == ref.shape == (3, 9, 8)
    full = np.abs(got - ref)[:, :8, :7]  # the last cells also hold level-2 pixels made from partial 4 x 4 blocks
    assert full.max() < 4.0
    assert full.mean() < 1.0


def test_cell_means_bad_cell_is_named(lossless):
    path, _ = lossless
    with PyramidSlide(path, "tifffile") as slide, pytest.raises(ValueError, match="cell"):
        cell_means(slide, (8, 0))


@pytest.fixture(scope="module")
def ramp(tmp_path_factory):
    """Lossless slide whose red channel is the row index and green twice the column index (200 x 120 px)."""
    img = np.zeros((200, 120, 3), np.uint8)
    img[..., 0] = np.arange(200)[:, None]
    img[..., 1] = 2 * np.arange(120)[None, :]
    path = tmp_path_factory.mktemp("wsi") / "ramp.tif"
    write_pyramidal_tiff(img, path, mpp=0.25, tile=32, levels=3, compression="lzw")
    return path


@pytest.mark.parametrize("fov, tol", [(10.4, 1e-9), (16.0, 1e-9), (25.6, 0.07)])
def test_subpixel_reads_sample_the_exact_fractional_positions(ramp, fov, tol):
    """subpixel=True: output pixel j of a FoV ``s`` centred (o even) at ``c`` samples the level-0 point
    ``c - s/2 + (j + 0.5) s / o``, fractional centres and FoVs included. On a ramp (pixel i holds i, i.e. the
    value at continuous position y is y - 0.5) linear weights return that position: exactly when enlarging
    (bilinear) or at scale 1 (the plain crop), within 0.07 when shrinking 1.6x (the sampled triangle filter's
    centroid, as in antialiased ``interpolate``). Rounding the region instead is off by up to half a pixel."""
    centers = np.array([[100.3, 40.7], [60.0, 61.25], [30.5, 90.0]])  # FoVs inside the slide: no padding
    got = read_multiscale(ramp, centers, [fov], 16, backend="tifffile", subpixel=True, dtype=torch.float64)[:, 0]
    pos = centers[:, :, None] - fov / 2 + (np.arange(16) + 0.5) * fov / 16 - 0.5  # [N, 2, 16] values expected
    np.testing.assert_allclose(got[:, 0].numpy(), np.broadcast_to(pos[:, 0, :, None], (3, 16, 16)), rtol=0, atol=tol)
    np.testing.assert_allclose(got[:, 1].numpy(), np.broadcast_to(2 * pos[:, 1, None, :], (3, 16, 16)), rtol=0, atol=2 * tol)
    if fov != 16.0:
        rounded = read_multiscale(ramp, centers, [round(fov)], 16, backend="tifffile", dtype=torch.float64)[:, 0]
        assert np.abs(rounded[:, 0].numpy() - pos[:, 0, :, None]).max() > 0.2


def test_subpixel_equals_plain_reads_on_whole_pixel_geometry(lossless):
    """With whole-pixel regions on the level's grid (even centres, FoVs 8 / 16 / 32 at output 8 from levels 0 /
    1 / 2) every scale is a plain crop either way: subpixel=True gives the same pixels."""
    path, _ = lossless
    centers = np.array([[40, 60], [100, 80], [200, 120]])
    plain = read_multiscale(path, centers, [8, 16, 32], 8, backend="tifffile")
    sub = read_multiscale(path, centers, [8.0, 16.0, 32.0], 8, backend="tifffile", subpixel=True)
    torch.testing.assert_close(sub, plain, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="patch_sizes"):
        read_multiscale(path, centers, [8.5], 8, backend="tifffile")  # fractional FoVs need subpixel=True
