"""WSIFoveatedInferer: streamed foveated inference over real pyramidal TIFF slides, outputs read back by OpenSlide."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from monai_fovea.data.io import write_pyramidal_tiff
from monai_fovea.inferers import WSIFoveatedInferer
from monai_fovea.networks import FoveatedSegmenter

openslide = pytest.importorskip("openslide", reason="openslide-python is needed to open the written label slide")
pytest.importorskip("zarr", reason="zarr is needed for tile-wise tifffile reads")


class RedThreshold(torch.nn.Module):
    """Backbone with a known output: class 1 where the red channel (in [0, 1]) exceeds 0.5, else class 0."""

    out_channels = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x[:, :1]
        return torch.cat([0.5 - r, r - 0.5], dim=1)


class ConstantLogits(torch.nn.Module):
    """Backbone returning the same logits at every pixel; counts the patches it sees."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))
        self.out_channels = len(logits)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return self.logits[None, :, None, None].expand(x.shape[0], -1, *x.shape[2:]).clone()


def _net(backbone: torch.nn.Module, patch_sizes=(16, 32), output_size=16) -> FoveatedSegmenter:
    return FoveatedSegmenter(backbone, list(patch_sizes), output_size, 2, 3, mode="fixed", fixed_index=0).eval()


@pytest.fixture(scope="module")
def blocky_slide(tmp_path_factory):
    """Lossless 3-level slide, 100 × 84 px at 0.25 µm/px (sizes not multiples of the 16-px tiles), random
    red/dark 4-px blocks."""
    rng = np.random.default_rng(5)
    red = (rng.random((25, 21)) > 0.5).repeat(4, 0).repeat(4, 1)
    img = np.zeros((100, 84, 3), np.uint8)
    img[..., 0] = np.where(red, 230, 20)
    img[..., 1] = 60
    img[..., 2] = 90
    path = tmp_path_factory.mktemp("slides") / "blocky.tif"
    write_pyramidal_tiff(img, path, mpp=0.25, tile=32, levels=3, compression="lzw")
    return path, img


@pytest.fixture(scope="module")
def half_tissue_slide(tmp_path_factory):
    """128 × 160 px: left half glass (light grey), right half H&E-pink tissue."""
    img = np.full((128, 160, 3), 238, np.uint8)
    img[:, 80:] = (190, 90, 160)
    path = tmp_path_factory.mktemp("slides") / "half.tif"
    write_pyramidal_tiff(img, path, mpp=0.5, tile=32, levels=2, compression="lzw")
    return path


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_known_network_gives_exact_mask_with_slide_geometry(blocky_slide, tmp_path, backend):
    path, img = blocky_slide
    inferer = WSIFoveatedInferer(sw_batch_size=5, backend=backend, use_tissue_mask=False, progress=False, tile=32)
    paths = inferer(path, _net(RedThreshold()), tmp_path)
    with tifffile.TiffFile(paths["label"]) as tif:
        label = tif.pages[0].asarray()
    np.testing.assert_array_equal(label, (img[..., 0] > 127).astype(np.uint8))
    assert inferer.last_stats["grid"] == (7, 6) and inferer.last_stats["predicted"] == 42
    slide = openslide.OpenSlide(str(paths["label"]))
    assert slide.dimensions == (84, 100)
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25, rel=1e-4)
    assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.25, rel=1e-4)
    assert slide.level_count >= 2
    level1 = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]))[..., 0]
    np.testing.assert_array_equal(level1, label[::2, ::2])  # label levels are nearest-reduced: values stay valid
    slide.close()
    overlay = np.asarray(Image.open(paths["overlay"]))
    assert overlay.shape == (100, 84, 3)
    # background (class 0) pixels show the slide unchanged, class-1 pixels are blended with the class colour
    np.testing.assert_array_equal(overlay[label == 0], img[label == 0])
    assert (overlay[label == 1] != img[label == 1]).any(axis=-1).all()


def test_tissue_mask_skips_glass_and_constant_model_fills_tissue(half_tissue_slide, tmp_path):
    backbone = ConstantLogits([0.0, 0.0, 5.0])  # always class 2
    inferer = WSIFoveatedInferer(sw_batch_size=7, backend="tifffile", use_tissue_mask=True, progress=False)
    paths = inferer(half_tissue_slide, _net(backbone), tmp_path)
    label = tifffile.imread(paths["label"])
    expected = np.zeros((128, 160), np.uint8)
    expected[:, 80:] = 2
    np.testing.assert_array_equal(label, expected)
    # 8 x 10 grid of 16-px cells, the 8 x 5 tissue cells are the only ones that reached the network
    assert inferer.last_stats == {**inferer.last_stats, "locations": 80, "predicted": 40, "skipped": 40}
    assert backbone.seen == 40
    # without the mask every location is predicted
    backbone.seen = 0
    inferer_all = WSIFoveatedInferer(sw_batch_size=64, backend="tifffile", use_tissue_mask=False, progress=False)
    label_all = tifffile.imread(inferer_all(half_tissue_slide, _net(backbone), tmp_path / "all")["label"])
    assert (label_all == 2).all() and backbone.seen == 80


def test_probability_output_and_apsm_png(half_tissue_slide, tmp_path):
    # logits (0, ln 3): softmax of class 1 is exactly 3/4 -> 191 after x255 and rounding
    backbone = ConstantLogits([0.0, float(np.log(3.0))])
    net = FoveatedSegmenter(backbone, [16, 32, 64], 16, 2, 3, mode="average").eval()
    inferer = WSIFoveatedInferer(backend="tifffile", use_tissue_mask=False, output="probability", progress=False)
    paths = inferer(half_tissue_slide, net, tmp_path, name="case")
    assert paths["label"].name == "case_prob.tif"
    assert (tifffile.imread(paths["label"]) == 191).all()
    # average mode: every location's APSM is the mean FoV (16 + 32 + 64) / 3 = 37.33 px
    assert inferer.last_stats["mean_apsm"] == pytest.approx(112 / 3, rel=1e-5)
    png = np.asarray(Image.open(paths["apsm"]))
    k = png.shape[0] // 8  # the 8 x 10 grid drawn as square k x k cells, then the colour bar on the right
    assert png.ndim == 3 and png.shape[0] == 8 * k and png.shape[1] > 10 * k
    apsm = png[:, : 10 * k]
    assert len(np.unique(apsm.reshape(-1, 3), axis=0)) == 1  # one APSM value everywhere ...
    # ... at 37.33 px on the 16..64 px scale, the colour of the bar at that height (top = 64 px, bottom = 16 px)
    bar = png[:, 10 * k + 8 + 8]  # margin 8, middle of the 16-px bar
    row = int(round((64 - 112 / 3) / (64 - 16) * (png.shape[0] - 1)))
    assert np.abs(bar[row].astype(int) - apsm[0, 0].astype(int)).max() <= 3


def test_larger_predicted_region_than_output(blocky_slide, tmp_path):
    """patch_sizes[0] = 32 at output 16: predictions are upsampled ×2 to the 32-px tiles they cover."""
    path, img = blocky_slide
    inferer = WSIFoveatedInferer(backend="tifffile", use_tissue_mask=False, progress=False)
    label = tifffile.imread(inferer(path, _net(ConstantLogits([1.0, 0.0]), (32, 64), 16), tmp_path)["label"])
    assert label.shape == (100, 84) and (label == 0).all()
    assert inferer.last_stats["grid"] == (4, 3)


def test_output_fusion_reads_only_the_wide_scale_and_zooms_into_its_prediction(tmp_path):
    """fusion="output", fixed on the 2x FoV: the inferer reads only that scale (level 1 of a lossless pyramid), the
    backbone segments it at half resolution and the central region is upsampled 2x. Red/dark 8-px blocks: every
    pixel at least 2 px from a block edge gets its block's class; a wrong crop or zoom would move the blocks."""
    rng = np.random.default_rng(7)
    red = (rng.random((12, 10)) > 0.5).repeat(8, 0).repeat(8, 1)
    img = np.zeros((96, 80, 3), np.uint8)
    img[..., 0] = np.where(red, 230, 20)
    img[..., 1:] = 60
    path = write_pyramidal_tiff(img, tmp_path / "blocks8.tif", mpp=0.25, tile=32, levels=2, compression="lzw")
    net = FoveatedSegmenter(RedThreshold(), [16, 32], 16, 2, 3, mode="fixed", fixed_index=1, fusion="output").eval()
    seen = []  # patches per backbone call
    net.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    inferer = WSIFoveatedInferer(sw_batch_size=8, backend="tifffile", use_tissue_mask=False, progress=False)
    label = tifffile.imread(inferer(path, net, tmp_path / "out")["label"])
    interior = np.zeros((96, 80), bool)
    for r in range(12):
        for c in range(10):
            interior[8 * r + 2 : 8 * r + 6, 8 * c + 2 : 8 * c + 6] = True
    np.testing.assert_array_equal(label[interior], red[interior].astype(np.uint8))
    assert sum(seen) == 6 * 5  # one backbone pass per 16-px cell: only the used scale was read and segmented


def test_bad_arguments_are_named(blocky_slide, tmp_path):
    path, _ = blocky_slide
    with pytest.raises(ValueError, match="sw_batch_size"):
        WSIFoveatedInferer(sw_batch_size=0)
    with pytest.raises(ValueError, match="output"):
        WSIFoveatedInferer(output="logits")
    net = FoveatedSegmenter(ConstantLogits([0.0, 1.0]), [16, 32], 16, 2, 3, stride=24).eval()
    with pytest.raises(ValueError, match="stride"):
        WSIFoveatedInferer(backend="tifffile", progress=False)(path, net, tmp_path)


# --- running the network at its own µm/px (mpp) -----------------------------------------------------------------

MODEL_MPP = 0.499  # the bundle's model, trained on the cmu sample slide's level 0
CROP = (1200, 600, 768)  # top, left, size (level-0 px): glass on the left, stroma, a nuclei-dense epidermis


def _dsc(a: np.ndarray, b: np.ndarray, k: int) -> float:
    x, y = a == k, b == k
    return float(2 * (x & y).sum() / (x.sum() + y.sum()))


def _tiff_mpp(path) -> tuple[float, float]:
    """(mpp_y, mpp_x) of a TIFF's first page from its resolution tags (px per cm, as the writer stores them)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        xres, yres = page.resolution
    return 1e4 / yres, 1e4 / xres


@pytest.fixture(scope="module")
def trained_net():
    """The foveation_wsi_segmentation bundle's trained model (a real network: decisions depend on pixel detail)."""
    from pathlib import Path

    from monai_fovea.apps.foveation_wsi import build_network

    net = build_network(patch_sizes=[64, 128, 256], output_size=64, num_classes=4, features=[8, 8, 16, 32, 64, 8])
    path = Path(__file__).resolve().parents[2] / "bundles" / "foveation_wsi_segmentation" / "models" / "model.pt"
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


@pytest.fixture(scope="module")
def cmu_crop(sample) -> np.ndarray:
    """The CROP of the sample slide's level 0, [768, 768, 3] uint8."""
    top, left, size = CROP
    with tifffile.TiffFile(sample("cmu_slide")["image"]) as tif:
        return tif.series[0].levels[0].asarray()[top : top + size, left : left + size]


@pytest.fixture(scope="module")
def cmu_crop_slides(cmu_crop, tmp_path_factory):
    """A 768 x 768 crop of the sample slide (0.499 µm/px) and the same crop scanned "at 40x": every pixel
    replicated 2 x 2 (1536 x 1536 at 0.2495 µm/px), both lossless (LZW).

    Lossless on purpose: the 2x slide's level k + 1 (2 x 2 means of equal pixels) is then the native level k pixel
    for pixel, so any disagreement is the inferer's geometry. With JPEG tiles on the 2x slide only, the pixels
    the network sees differ by JPEG noise (mean 1.9, max 30 grey levels), which alone moves the DSCs to 0.986 /
    0.969 / 0.954 (JPEG on both slides: identical again, since JPEG then encodes the same level pixels).
    """
    crop = cmu_crop
    folder = tmp_path_factory.mktemp("mpp")
    native = write_pyramidal_tiff(crop, folder / "native.tif", mpp=MODEL_MPP, levels=3, compression="lzw")
    x2 = write_pyramidal_tiff(
        crop.repeat(2, 0).repeat(2, 1), folder / "x2.tif", mpp=MODEL_MPP / 2, levels=4, compression="lzw"
    )
    return native, x2


def test_model_mpp_equal_to_slide_mpp_is_bit_identical(cmu_crop_slides, trained_net, tmp_path):
    """mpp = the slide's 0.499 (factor 1), and 0.5 (factor 1.002, snapped to 1 by the 1% tolerance), reproduce the
    mpp=None run byte for byte: labels, overlay and APSM files. Without snapping (mpp_rtol=0) a 0.2% rescale
    resamples every patch and the labels change: the tolerance is what keeps them identical."""
    native, _ = cmu_crop_slides
    common = {"sw_batch_size": 32, "backend": "tifffile", "progress": False}
    ref = WSIFoveatedInferer(**common)
    ref_paths = ref(native, trained_net, tmp_path / "none")
    assert ref.last_stats["factor"] == (1.0, 1.0) and ref.last_stats["mpp"] is None
    ref_label = tifffile.imread(ref_paths["label"])
    assert np.bincount(ref_label.ravel(), minlength=3).min() > 10_000  # all three classes present
    for mpp in (MODEL_MPP, 0.5):
        inferer = WSIFoveatedInferer(mpp=mpp, **common)
        paths = inferer(native, trained_net, tmp_path / str(mpp))
        assert inferer.last_stats["factor"] == (1.0, 1.0)
        assert inferer.last_stats["slide_mpp"] == pytest.approx((MODEL_MPP, MODEL_MPP))
        assert inferer.last_stats["mpp_source"] == "slide"
        for key in ("label", "overlay", "apsm"):
            assert paths[key].read_bytes() == ref_paths[key].read_bytes(), (mpp, key)
    unsnapped = WSIFoveatedInferer(mpp=0.5, mpp_rtol=0.0, **common)
    label = tifffile.imread(unsnapped(native, trained_net, tmp_path / "unsnapped")["label"])
    assert unsnapped.last_stats["factor"] == pytest.approx((0.5 / MODEL_MPP,) * 2)
    assert label.shape == ref_label.shape and (label != ref_label).any()


def test_40x_slide_at_model_mpp_matches_native_slide(cmu_crop_slides, trained_net, tmp_path):
    """The acceptance test: the 2x-upsampled crop (0.2495 µm/px) run at the model's 0.499 µm/px gives, reduced
    2x, the native crop's labels (per-class DSC >= 0.95; measured 1.0, 1.0, 1.0 — in fact equal pixel for
    pixel, see the fixture), written on the 2x slide's own grid and resolution."""
    native, x2 = cmu_crop_slides
    inferer = WSIFoveatedInferer(sw_batch_size=32, backend="tifffile", progress=False, mpp=MODEL_MPP)
    label_native = tifffile.imread(inferer(native, trained_net, tmp_path / "native")["label"])
    stats_native = dict(inferer.last_stats)
    paths = inferer(x2, trained_net, tmp_path / "x2")
    stats = inferer.last_stats
    assert stats["factor"] == (2.0, 2.0) and stats["slide_mpp"] == pytest.approx((MODEL_MPP / 2,) * 2)
    # the same 12 x 12 grid of 64-model-px locations and the same tissue cells as on the native slide
    assert stats["grid"] == stats_native["grid"] == (12, 12)
    assert stats["predicted"] == stats_native["predicted"] < 144
    label = tifffile.imread(paths["label"])
    assert label.shape == (1536, 1536)
    assert _tiff_mpp(paths["label"]) == pytest.approx((MODEL_MPP / 2, MODEL_MPP / 2), rel=1e-4)
    reduced = label[::2, ::2]
    dscs = [_dsc(reduced, label_native, k) for k in range(3)]
    assert min(dscs) >= 0.95, dscs
    np.testing.assert_array_equal(reduced, label_native)
    # nearest upsampling: each model pixel is a 2 x 2 block of equal labels at level 0
    np.testing.assert_array_equal(label, reduced.repeat(2, 0).repeat(2, 1))


def test_fractional_factor_on_real_tissue(cmu_crop, cmu_crop_slides, trained_net, tmp_path):
    """The crop enlarged 1.6x (768 -> 1229 px, antialiased bilinear, at 0.499 * 768 / 1229 µm/px): factor 1.6003
    is fractional, so FoVs (102.4 / 204.8 / 409.7 level-0 px) and centres are resampled at their exact positions.
    Sampled back onto the native grid (nearest) the labels agree with the native run: >= 95 % of the pixels and
    per-class DSC >= 0.9. Measured with the bundle's model 0.3.0: 96.3 %, DSC 0.976 / 0.930 / 0.920 / 0.967 (the
    0.2.0 model, which did not mix its wide views' predictions, agreed more: 97.8 %, 0.989 / 0.968 / 0.970 / 0.964;
    the image itself is resampled twice here, so the labels cannot agree exactly)."""
    native, _ = cmu_crop_slides
    size = 1229
    enlarged = F.interpolate(
        torch.from_numpy(cmu_crop).permute(2, 0, 1)[None].float(), size=(size, size), mode="bilinear",
        align_corners=False, antialias=True,
    )[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    path = write_pyramidal_tiff(enlarged, tmp_path / "x1p6.tif", mpp=MODEL_MPP * 768 / size, levels=4, compression="lzw")
    inferer = WSIFoveatedInferer(sw_batch_size=32, backend="tifffile", progress=False, mpp=MODEL_MPP)
    label_native = tifffile.imread(inferer(native, trained_net, tmp_path / "native")["label"])
    label = tifffile.imread(inferer(path, trained_net, tmp_path / "x1p6")["label"])
    factor = inferer.last_stats["factor"][0]
    assert factor == pytest.approx(size / 768) and inferer.last_stats["grid"] == (12, 12)
    assert label.shape == (size, size)
    back = np.minimum(np.floor((np.arange(768) + 0.5) * factor).astype(np.int64), size - 1)
    dscs = [_dsc(label[back][:, back], label_native, k) for k in range(4)]
    assert (label[back][:, back] == label_native).mean() >= 0.95
    assert min(dscs) >= 0.9, dscs


@pytest.fixture(scope="module")
def coarse_blocky_slide(tmp_path_factory):
    """Lossless 3-level slide, 150 x 130 px at 0.25 µm/px, random red/dark 10-px blocks (wide enough that most
    pixels lie away from a block edge)."""
    rng = np.random.default_rng(11)
    red = (rng.random((15, 13)) > 0.5).repeat(10, 0).repeat(10, 1)
    img = np.zeros((150, 130, 3), np.uint8)
    img[..., 0] = np.where(red, 230, 20)
    img[..., 1:] = 70
    path = tmp_path_factory.mktemp("slides") / "coarse_blocky.tif"
    write_pyramidal_tiff(img, path, mpp=0.25, tile=32, levels=3, compression="lzw")
    return path, (img[..., 0] > 127).astype(np.uint8)


@pytest.mark.parametrize(
    "mpp, factor, grid",
    [
        (0.3125, 1.25, (8, 7)),  # FoVs of 20 / 40 level-0 px, cells of 20 px; model image 120 x 104 px
        (0.125, 0.5, (19, 17)),  # the network finer than the slide: 8 / 16 level-0 px enlarged to 16; 300 x 260
        (0.4, 1.6, (6, 6)),  # fractional: FoVs of 25.6 / 51.2 px (subpixel reads), cells of 25.6 px; 94 x 82
        (0.33, 1.32, (8, 7)),  # fractional, and the last model column's centre lies outside the slide; 114 x 99
    ],
)
def test_non_unit_factor_follows_the_slide(coarse_blocky_slide, tmp_path, mpp, factor, grid):
    """The red-threshold network run at another µm/px than the slide's must still draw the red blocks on the
    slide's own grid: every pixel right except those touching a block edge (a model pixel spans up to 1.6 level-0
    px, so nearest write-back can move an edge by one pixel), so a misplaced centre, FoV or write-back would
    show. Border padding: a model pixel straddling the slide's edge then sees slide pixels, not black."""
    path, truth = coarse_blocky_slide
    inferer = WSIFoveatedInferer(
        backend="tifffile", use_tissue_mask=False, progress=False, tile=32, mpp=mpp, padding_mode="border"
    )
    label = tifffile.imread(inferer(path, _net(RedThreshold()), tmp_path)["label"])
    assert inferer.last_stats["factor"] == (factor, factor)
    assert inferer.last_stats["grid"] == grid and inferer.last_stats["predicted"] == grid[0] * grid[1]
    assert label.shape == (150, 130)
    near_edge = np.zeros(truth.shape, bool)  # both pixels of every pair of 4-neighbours with different labels
    rows, cols = truth[1:] != truth[:-1], truth[:, 1:] != truth[:, :-1]
    near_edge[1:] |= rows
    near_edge[:-1] |= rows
    near_edge[:, 1:] |= cols
    near_edge[:, :-1] |= cols
    assert (~near_edge).mean() > 0.75
    np.testing.assert_array_equal(label[~near_edge], truth[~near_edge])
    assert (label == truth).mean() > 0.95


def test_slide_without_resolution(tmp_path):
    """No resolution tags: mpp set and no default_mpp is an error naming the file and default_mpp; with
    default_mpp the slide is taken at that resolution (factor 0.5 / 0.25 = 2) and the label TIFF carries it."""
    img = np.zeros((96, 128, 3), np.uint8)
    img[:, 64:, 0] = 230
    path = tmp_path / "no_resolution.tif"
    tifffile.imwrite(path, img, tile=(32, 32), photometric="rgb")  # a plain tiled TIFF: no resolution tags
    net = _net(RedThreshold())
    with pytest.raises(ValueError, match=r"no_resolution\.tif.*default_mpp"):
        WSIFoveatedInferer(backend="tifffile", use_tissue_mask=False, progress=False, mpp=0.5)(path, net, tmp_path)
    inferer = WSIFoveatedInferer(
        backend="tifffile", use_tissue_mask=False, progress=False, mpp=0.5, default_mpp=0.25
    )
    paths = inferer(path, net, tmp_path / "out")
    assert inferer.last_stats["mpp_source"] == "default_mpp" and inferer.last_stats["factor"] == (2.0, 2.0)
    assert inferer.last_stats["grid"] == (3, 4)  # 48 x 64 model px in 16-px cells
    label = tifffile.imread(paths["label"])
    expected = np.zeros((96, 128), np.uint8)
    expected[:, 64:] = 1
    np.testing.assert_array_equal(label, expected)
    assert _tiff_mpp(paths["label"]) == pytest.approx((0.25, 0.25), rel=1e-4)
    # mpp=None keeps working on such a slide (level-0 pixels, as before the mpp argument existed)
    legacy = WSIFoveatedInferer(backend="tifffile", use_tissue_mask=False, progress=False)
    np.testing.assert_array_equal(tifffile.imread(legacy(path, net, tmp_path / "legacy")["label"]), expected)
    assert legacy.last_stats["factor"] == (1.0, 1.0) and legacy.last_stats["slide_mpp"] is None


@pytest.mark.parametrize("kwargs, name", [({"mpp": 0.0}, "mpp"), ({"default_mpp": -0.25}, "default_mpp"), ({"mpp_rtol": 0.5}, "mpp_rtol")])
def test_bad_resolution_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        WSIFoveatedInferer(**kwargs)
