"""MultiScaleWSIPatches(d): multi-scale patches read from a real pyramidal TIFF through MONAI's WSIReader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_fovea.data.io import write_pyramidal_tiff
from monai_fovea.data.wsi import PyramidSlide
from monai_fovea.transforms.foveation import MultiScalePatches
from monai_fovea.transforms.foveation.wsi import (
    MultiScaleWSIPatches,
    MultiScaleWSIPatchesd,
    MultiScaleWSIPatchesD,
    MultiScaleWSIPatchesDict,
)

pytest.importorskip("zarr", reason="zarr is needed for tile-wise tifffile reads")


@pytest.fixture(scope="module")
def noise_slide(tmp_path_factory):
    """Lossless 3-level pyramid (LZW) of RGB noise, 0.5 µm/px, and the level-0 array."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (256, 192, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("fov_wsi") / "noise.tif"
    write_pyramidal_tiff(img, path, mpp=0.5, tile=64, levels=3, compression="lzw")
    return path, img


def test_matches_in_memory_multiscale_patches(noise_slide):
    path, img = noise_slide
    centers = torch.tensor([[64, 64], [128, 96], [8, 184]])  # the last one crosses the right/top edges
    sizes, out = [16, 32, 64], 16
    got = MultiScaleWSIPatches(sizes, out, backend="tifffile")(path, centers)
    ref = MultiScalePatches(sizes, out)(torch.from_numpy(img).permute(2, 0, 1).float(), centers)
    assert isinstance(got, MetaTensor) and got.shape == (3, 3, 3, 16, 16)
    torch.testing.assert_close(got[:, 0].as_tensor(), ref[:, 0], rtol=0, atol=0)  # FoV == output: exact crop
    # aligned centres: level k of the file is the rounded 2^k block mean that MultiScalePatches' mip-map samples
    assert (got[:2, 1:].as_tensor() - ref[:2, 1:]).abs().max() <= 1.0
    # the edge centre: the file's levels pad at other places than the in-memory mip-map (ceil-size levels), so
    # only the inside part is compared — the top-left quarter of the FoV-32 patch lies inside the image
    assert (got[2, 1, :, 8:, :4].as_tensor() - ref[2, 1, :, 8:, :4]).abs().max() <= 1.0


def test_meta_levels_and_affines(noise_slide):
    path, _ = noise_slide
    t = MultiScaleWSIPatches([16, 32, 64], 16, backend="tifffile")
    out = t(path, np.array([[64, 64]]))
    assert out.meta["foveation_levels"] == [0, 1, 2]
    assert out.meta["filename_or_obj"] == str(path)
    assert tuple(out.meta["spatial_shape"]) == (256, 192)
    aff = out.meta["foveation_affines"]
    assert aff.shape == (1, 3, 3, 3)
    # scale 1 (FoV 32 -> 16 px): step 2 px = 1.0 µm; first pixel centre at 63.5 - 16 + 1 = 48.5 px = 24.25 µm
    expected = torch.tensor([[1.0, 0.0, 24.25], [0.0, 1.0, 24.25], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(aff[0, 1], expected)
    # scale 0 maps patch pixel 0 to the crop's first level-0 pixel, 64 - 8 = 56 px = 28 µm
    assert aff[0, 0, 0, 2].item() == pytest.approx(28.0)


def test_open_slide_and_base_level(noise_slide):
    path, img = noise_slide
    with PyramidSlide(path, "tifffile") as slide:
        out = MultiScaleWSIPatches([8, 32], 8, level_selection="base")(slide, [[100, 50]])
    assert out.meta["foveation_levels"] == [0, 0]
    np.testing.assert_array_equal(out[0, 0].permute(1, 2, 0).numpy(), img[96:104, 46:54].astype(np.float32))


def test_padding_constant_value(noise_slide):
    path, _ = noise_slide
    out = MultiScaleWSIPatches([4], 4, backend="tifffile", padding_mode="constant", value=255)(path, [[-10, -10]])
    assert (out == 255).all()


def test_dictionary_twin_and_aliases(noise_slide):
    path, img = noise_slide
    assert MultiScaleWSIPatchesD is MultiScaleWSIPatchesd and MultiScaleWSIPatchesDict is MultiScaleWSIPatchesd
    t = MultiScaleWSIPatchesd("image", "centers", [8, 16], 8, backend="tifffile")
    data = {"image": str(path), "centers": torch.tensor([[20, 30], [40, 50]]), "label": 1}
    out = t(data)
    assert out["image"].shape == (2, 2, 3, 8, 8) and out["label"] == 1 and data["image"] == str(path)
    np.testing.assert_array_equal(out["image"][1, 0].permute(1, 2, 0).numpy(), img[36:44, 46:54].astype(np.float32))
    with pytest.raises(KeyError, match="centers"):
        t({"image": str(path)})
    with pytest.raises(ValueError, match="patch_sizes"):
        MultiScaleWSIPatches([], 8)
