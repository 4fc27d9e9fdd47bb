"""multiscale_patches: exact crops, block averages, padding modes, and agreement with a per-patch reference loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from monai_fovea.transforms.foveation import strided
from monai_fovea.transforms.foveation.functional import build_pyramid, multiscale_patches, pyramid_level

PADDING_MODES = ["zeros", "constant", "border", "reflect", "symmetric"]


def _use_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Force the sampling path of ``multiscale_patches`` (the automatic choice depends on the problem size):
    ``general`` (batched ``F.grid_sample``), ``fast-pad`` (strided fast path for whole-number steps, levels always
    padded) or ``fast-nopad`` (fast path, never pad: border patches fall back to the general path)."""
    never = 2**62
    monkeypatch.setattr(strided, "_FAST_PATH_MIN_ELEMENTS", never if path == "general" else 0)
    monkeypatch.setattr(strided, "_PREP_COPY_FACTOR", never if path == "fast-pad" else 0)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # every test of this module runs on each sampling path, except those that compare the paths themselves
    if not metafunc.function.__name__.startswith("test_fast_path"):
        metafunc.parametrize("sampling_path", ["general", "fast-pad", "fast-nopad"], indirect=True)


@pytest.fixture(autouse=True)
def sampling_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    path = getattr(request, "param", "auto")
    if path != "auto":
        _use_path(monkeypatch, path)
    return path


NP_PAD = {"zeros": "constant", "constant": "constant", "border": "edge", "reflect": "reflect", "symmetric": "symmetric"}


def _np_pad(img: np.ndarray, margin: int, padding_mode: str, value: float = 0.0) -> np.ndarray:
    width = [(0, 0)] + [(margin, margin)] * (img.ndim - 1)
    if NP_PAD[padding_mode] == "constant":
        return np.pad(img, width, mode="constant", constant_values=value if padding_mode == "constant" else 0.0)
    return np.pad(img, width, mode=NP_PAD[padding_mode])


def _block_mean_level(img: np.ndarray, level: int) -> np.ndarray:
    """Mip level by reshaping into 2**level blocks (image sizes divisible by 2**level) — independent of avg_pool."""
    f = 2**level
    c, *spatial = img.shape
    shape = [c]
    for s in spatial:
        shape += [s // f, f]
    return img.reshape(shape).mean(axis=tuple(range(2, 2 + 2 * len(spatial), 2)))


def _reference_patch(img, center, patch_size, output_size, padding_mode, value, antialias):
    """One patch, one scale, by hand: pick the level, pad it, map_coordinates (order 1) at the stated positions."""
    ndim = img.ndim - 1
    step = min(s / o for s, o in zip(patch_size, output_size))
    level = pyramid_level(step) if antialias else 0
    lev = _block_mean_level(img, level)
    f = 2**level
    margin = 64
    padded = _np_pad(lev, margin, padding_mode, value)
    axes = []
    for a in range(ndim):
        s, o = patch_size[a], output_size[a]
        g = center[a] - o // 2 + (o - 1) / 2
        x = g - s / 2 + (np.arange(o) + 0.5) * s / o
        axes.append((x - (f - 1) / 2) / f + margin)
    grid = np.meshgrid(*axes, indexing="ij")
    return np.stack([ndimage.map_coordinates(ch, grid, order=1, mode="nearest") for ch in padded])


@pytest.mark.parametrize("output_size", [8, 7, (6, 9)])
def test_unit_scale_is_exact_crop_2d_interior(output_size):
    torch.manual_seed(0)
    img = torch.randn(3, 40, 50)
    centers = torch.tensor([[20, 25], [13, 30], [30, 11]])
    o = (output_size, output_size) if isinstance(output_size, int) else output_size
    out = multiscale_patches(img, centers, [o, (2 * o[0], 2 * o[1])], o)
    for n, (cy, cx) in enumerate(centers.tolist()):
        crop = img[:, cy - o[0] // 2 : cy - o[0] // 2 + o[0], cx - o[1] // 2 : cx - o[1] // 2 + o[1]]
        assert torch.equal(out[n, 0], crop)


def test_unit_scale_is_exact_crop_3d_interior():
    torch.manual_seed(1)
    img = torch.randn(2, 20, 22, 24)
    centers = torch.tensor([[10, 11, 12], [7, 14, 9]])
    out = multiscale_patches(img, centers, [6, 12], 6)
    for n, (z, y, x) in enumerate(centers.tolist()):
        assert torch.equal(out[n, 0], img[:, z - 3 : z + 3, y - 3 : y + 3, x - 3 : x + 3])


@pytest.mark.parametrize("padding_mode", ["zeros", "constant", "border", "reflect", "symmetric"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_unit_scale_is_exact_padded_crop_at_border(padding_mode, ndim):
    rng = np.random.default_rng(2)
    shape = (2,) + ((12, 14) if ndim == 2 else (10, 12, 9))
    img = rng.standard_normal(shape).astype(np.float32)
    centers = np.array([[0] * ndim, [s - 1 for s in shape[1:]], [1] + [s // 2 for s in shape[2:]]])
    o = 6
    out = multiscale_patches(img, centers, [o], o, padding_mode=padding_mode, value=-3.5)
    margin = 8
    padded = _np_pad(img, margin, padding_mode, value=-3.5)
    for n, c in enumerate(centers):
        sl = tuple(slice(ci - o // 2 + margin, ci - o // 2 + margin + o) for ci in c)
        assert np.array_equal(out[n, 0].numpy(), padded[(slice(None),) + sl]), (padding_mode, c)


def test_integer_factor_scales_equal_block_average():
    torch.manual_seed(3)
    img = torch.rand(3, 64, 64, dtype=torch.float64)
    o = 8
    centers = torch.tensor([[32, 32], [24, 40]])  # multiples of 4: blocks align with mip levels 1 and 2
    out = multiscale_patches(img, centers, [8, 16, 32], o)
    for n, (cy, cx) in enumerate(centers.tolist()):
        for d, k in ((1, 2), (2, 4)):
            s = k * o
            region = img[:, cy - s // 2 : cy + s // 2, cx - s // 2 : cx + s // 2]
            expected = region.reshape(3, o, k, o, k).mean(dim=(2, 4))
            torch.testing.assert_close(out[n, d], expected, rtol=0, atol=1e-12)
    # without the mip-map, 4x sampling reads 2 of every 4 pixels per axis: not the block average (aliasing)
    aliased = multiscale_patches(img, centers, [32], o, antialias=False)
    region = img[:, 16:48, 16:48].reshape(3, o, 4, o, 4).mean(dim=(2, 4))
    assert (aliased[0, 0] - region).abs().max() > 1e-3


def test_integer_factor_block_average_3d():
    torch.manual_seed(4)
    img = torch.rand(1, 16, 16, 16, dtype=torch.float64)
    out = multiscale_patches(img, [[8, 8, 8]], [4, 8], 4)
    expected = img[:, 4:12, 4:12, 4:12].reshape(1, 4, 2, 4, 2, 4, 2).mean(dim=(2, 4, 6))
    torch.testing.assert_close(out[0, 1], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("padding_mode", ["zeros", "constant", "border", "reflect", "symmetric"])
@pytest.mark.parametrize("antialias", [True, False])
def test_vectorised_equals_per_patch_reference_loop_2d(padding_mode, antialias):
    rng = np.random.default_rng(5)
    img = rng.standard_normal((2, 48, 64))
    centers = np.concatenate([rng.uniform(-4, 52, (6, 1)), rng.uniform(-4, 68, (6, 1))], axis=1)
    centers[:2] = np.round(centers[:2])
    patch_sizes = [8, 12, 16, (20, 16), 32, 40]  # steps 1, 1.5, 2, (2.5, 2), 4, 5 -> levels 0, 0, 1, 1, 2, 2
    out = multiscale_patches(img, centers, patch_sizes, 8, padding_mode=padding_mode, value=0.7, antialias=antialias)
    assert out.shape == (6, 6, 2, 8, 8)
    for n in range(len(centers)):
        for d, ps in enumerate(patch_sizes):
            ps2 = (ps, ps) if isinstance(ps, int) else ps
            ref = _reference_patch(img, centers[n], ps2, (8, 8), padding_mode, 0.7, antialias)
            np.testing.assert_allclose(out[n, d].numpy(), ref, atol=1e-9, err_msg=f"{padding_mode} n={n} d={d}")


def test_vectorised_equals_per_patch_reference_loop_3d():
    rng = np.random.default_rng(6)
    img = rng.standard_normal((1, 16, 20, 24))
    centers = rng.uniform(-2, 18, (4, 3))
    patch_sizes = [4, (6, 8, 4), 8, 12]
    out = multiscale_patches(img, centers, patch_sizes, 4, padding_mode="reflect")
    for n in range(len(centers)):
        for d, ps in enumerate(patch_sizes):
            ps3 = (ps,) * 3 if isinstance(ps, int) else ps
            ref = _reference_patch(img, centers[n], ps3, (4, 4, 4), "reflect", 0.0, True)
            np.testing.assert_allclose(out[n, d].numpy(), ref, atol=1e-9)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_centres_far_outside_equal_numpy_padding(padding_mode):
    """Centres several image sizes away (reflect/symmetric repeat their period many times; the sampler folds the
    positions back instead of padding), on an image whose sides are not powers of two."""
    rng = np.random.default_rng(10)
    img = rng.standard_normal((2, 13, 21))
    centers = np.array([[-40.0, 60.0], [50.25, -30.5], [6.0, 10.0], [-3.0, 22.0]])  # inside the reference's margin
    patch_sizes = [7, 11, 30]  # steps 1, 11/7, 30/7
    out = multiscale_patches(img, centers, patch_sizes, 7, padding_mode=padding_mode, value=0.7, antialias=False)
    for n in range(len(centers)):
        for d, ps in enumerate(patch_sizes):
            ref = _reference_patch(img, centers[n], (ps, ps), (7, 7), padding_mode, 0.7, False)
            np.testing.assert_allclose(out[n, d].numpy(), ref, atol=1e-9, err_msg=f"{padding_mode} n={n} d={d}")


def test_nearest_mode_keeps_label_values_and_fill():
    lab = torch.zeros(1, 16, 16, dtype=torch.int64)
    lab[0, 4:8, 4:8] = 3
    lab[0, 10:, 10:] = 7
    out = multiscale_patches(lab, [[0, 0], [8, 8]], [4, 8], 4, mode="nearest", padding_mode="constant", value=255)
    assert out.dtype == torch.int64
    assert torch.equal(out[0, 0, 0], torch.tensor([[255, 255, 255, 255], [255, 255, 255, 255], [255, 255, 0, 0],
                                                   [255, 255, 0, 0]]))
    # 2x nearest samples pixel 2j+1 of the region [4, 12): rows/cols 5, 7, 9, 11
    expected = lab[0, 5:12:2, 5:12:2]
    assert torch.equal(out[1, 1, 0], expected)
    assert set(out.unique().tolist()) <= {0, 3, 7, 255}


def test_pyramid_levels_are_block_means():
    img = torch.arange(2 * 8 * 8, dtype=torch.float64).reshape(2, 8, 8)
    levels = build_pyramid(img, 3)
    np.testing.assert_allclose(levels[2].numpy(), _block_mean_level(img.numpy(), 2))
    assert [lv.shape[1:] for lv in levels] == [(8, 8), (4, 4), (2, 2)]


def test_integer_image_gives_float_patches_and_empty_centres():
    img = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    out = multiscale_patches(img, [[16, 16]], [8, 16], 8)
    assert out.dtype == torch.float32
    assert torch.equal(out[0, 0], img[:, 12:20, 12:20].float())
    assert multiscale_patches(img, torch.zeros(0, 2), [8], 8).shape == (0, 1, 3, 8, 8)


def test_bad_inputs_name_the_argument():
    img = torch.zeros(1, 16, 16)
    with pytest.raises(ValueError, match="centers"):
        multiscale_patches(img, torch.zeros(3, 3), [8], 8)
    with pytest.raises(ValueError, match="padding_mode"):
        multiscale_patches(img, torch.zeros(1, 2), [8], 8, padding_mode="wrap")
    with pytest.raises(ValueError, match="output_size"):
        multiscale_patches(img, torch.zeros(1, 2), [8], (8, 8, 8))
    with pytest.raises(ValueError, match="patch_sizes"):
        multiscale_patches(img, torch.zeros(1, 2), [], 8)
    with pytest.raises(ValueError, match="img"):
        multiscale_patches(torch.zeros(16, 16), torch.zeros(1, 2), [8], 8)


def _both_paths(monkeypatch: pytest.MonkeyPatch, *args, **kwargs) -> dict[str, torch.Tensor]:
    out = {}
    for path in ("general", "fast-pad", "fast-nopad"):
        _use_path(monkeypatch, path)
        out[path] = multiscale_patches(*args, **kwargs)
    return out


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("fractional", [False, True])
def test_fast_path_equals_general_path(monkeypatch, padding_mode, ndim, antialias, fractional):
    """Whole-number steps (1, 2, 4 level pixels) take the strided fast path; it must give what the general
    interpolation path gives, for centres inside, near and over the border, and one far outside (beyond the
    padding cap), with every padding mode."""
    rng = np.random.default_rng(7)
    shape = (2, 24, 32) if ndim == 2 else (2, 12, 14, 16)
    img = torch.as_tensor(rng.standard_normal(shape))
    spatial = np.array(shape[1:])
    inner = rng.integers(4, spatial - 4, (10, ndim))
    edge = np.stack([np.zeros(ndim), spatial - 1, [1] + [s // 2 for s in spatial[1:]], [-3] * ndim,
                     [-200] + [0] * (ndim - 1)])
    centers = np.concatenate([inner, edge]).astype(np.float64)
    if fractional:
        centers += rng.uniform(0, 1, centers.shape)
    o = 4
    out = _both_paths(monkeypatch, img, centers, [o, 2 * o, 4 * o, 3 * o], o, padding_mode=padding_mode,
                      value=-1.5, antialias=antialias)
    for path in ("fast-pad", "fast-nopad"):
        torch.testing.assert_close(out[path], out["general"], rtol=0, atol=1e-12, msg=path)
        if not fractional:
            # integer centres, FoV == output size: a plain crop on every path, bit for bit
            assert torch.equal(out[path][:, 0], out["general"][:, 0])


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_fast_path_equals_general_path_nearest_labels(monkeypatch, padding_mode):
    rng = np.random.default_rng(8)
    lab = torch.as_tensor(rng.integers(0, 5, (1, 20, 18)))
    centers = np.concatenate([rng.integers(3, 15, (8, 2)), [[0, 0], [19, 17], [-2, 9]]]) + 0.25
    out = _both_paths(monkeypatch, lab, centers, [6, 12], 6, padding_mode=padding_mode, value=255,
                      antialias=False, mode="nearest")
    assert out["general"].dtype == torch.int64
    for path in ("fast-pad", "fast-nopad"):
        assert torch.equal(out[path], out["general"]), path


def test_fast_path_blends_a_shared_fraction_once(monkeypatch):
    """Integer centres without the mip-map: steps 2 and 4 sample at half pixels, the same fraction for every
    patch, so the fast path blends the level once (``_blend_level``) and gathers; still equal to the general
    path, and the unit scale stays an exact crop."""
    rng = np.random.default_rng(9)
    img = torch.as_tensor(rng.standard_normal((3, 32, 40)), dtype=torch.float32)
    centers = np.concatenate([rng.integers(8, 24, (12, 2)), [[0, 0], [31, 39]]])
    calls = []
    blend = strided._blend_level
    monkeypatch.setattr(strided, "_blend_level", lambda *a, **k: calls.append(1) or blend(*a, **k))
    out = _both_paths(monkeypatch, img, centers, [8, 16, 32], 8, antialias=False)
    assert calls, "the shared-fraction blend was not exercised"
    for path in ("fast-pad", "fast-nopad"):
        torch.testing.assert_close(out[path], out["general"], rtol=0, atol=1e-6)
        assert torch.equal(out[path][:, 0], out["general"][:, 0])
