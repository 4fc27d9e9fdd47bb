"""WSIFoveatedInferer: streamed foveated inference over real pyramidal TIFF slides, outputs read back by OpenSlide."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
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


def test_bad_arguments_are_named(blocky_slide, tmp_path):
    path, _ = blocky_slide
    with pytest.raises(ValueError, match="sw_batch_size"):
        WSIFoveatedInferer(sw_batch_size=0)
    with pytest.raises(ValueError, match="output"):
        WSIFoveatedInferer(output="logits")
    net = FoveatedSegmenter(ConstantLogits([0.0, 1.0]), [16, 32], 16, 2, 3, stride=24).eval()
    with pytest.raises(ValueError, match="stride"):
        WSIFoveatedInferer(backend="tifffile", progress=False)(path, net, tmp_path)
