"""FoveatedInferer: exact aggregation with a known backbone, probabilities sum to one, APSM of a known head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from monai.data import MetaTensor

from monai_fovea.inferers import FoveatedInferer, accumulate_predictions
from monai_fovea.inferers.foveated import region_starts, scan_centers
from monai_fovea.networks import FoveatedSegmenter


class _PixelLogits(nn.Module):
    """Logits (a * x, 0) per pixel of a one-channel input: class-0 probability sigmoid(a x), in closed form."""

    def __init__(self, spatial_dims, a=2.0):
        super().__init__()
        self.a = a

    def forward(self, x):
        return torch.cat([self.a * x, torch.zeros_like(x)], dim=1)


def _net(spatial_dims=2, mode="fixed", patch_sizes=(8, 16, 32), output_size=8):
    torch.manual_seed(0)
    return FoveatedSegmenter(_PixelLogits(spatial_dims), list(patch_sizes), output_size, spatial_dims=spatial_dims,
                             in_channels=1, mode=mode, fixed_index=0, stride=4).eval()


@pytest.mark.parametrize("overlap,blend", [(0.0, "constant"), (0.5, "gaussian"), (0.25, "constant")])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fixed_unit_scale_reproduces_per_pixel_prediction(overlap, blend, spatial_dims):
    shape = (21, 30) if spatial_dims == 2 else (10, 13, 9)
    img = torch.randn(2, 1, *shape)
    probs, apsm = FoveatedInferer(sw_batch_size=5, overlap=overlap, mode=blend)(img, _net(spatial_dims))
    assert probs.shape == (2, 2, *shape)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, *shape))
    # every window crops the image exactly at the unit scale, so each pixel's average is its own prediction
    torch.testing.assert_close(probs[:, 0], torch.sigmoid(2.0 * img[:, 0]))
    grid = tuple(math.ceil(s / 4) for s in shape)
    assert apsm.shape == (2, 1, *grid)
    torch.testing.assert_close(apsm, torch.full_like(apsm, 8.0))


def test_apsm_of_a_head_with_known_weights():
    net = _net(mode="soft")
    # zero last conv, BN bias b: the head's logits are b everywhere -> weights softmax(b) at every location
    last_conv = [m for m in net.head.modules() if isinstance(m, nn.Conv2d)][-1]
    last_bn = [m for m in net.head.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    with torch.no_grad():
        last_conv.weight.zero_()
        last_bn.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    f = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    img = torch.randn(1, 1, 24, 16)
    probs, apsm = FoveatedInferer(sw_batch_size=3)(img, net)
    expected = float(f[0] * 8 + f[1] * 16 + f[2] * 32)
    torch.testing.assert_close(apsm, torch.full((1, 1, 6, 4), expected))
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 24, 16))
    # each window's probabilities are the soft-foveated prediction of its centre
    centers = scan_centers((24, 16), (8, 8))
    logits, w = net(img[0], centers)
    torch.testing.assert_close(w, f.expand(len(centers), 3))
    p = torch.softmax(logits, 1)
    for n, (y, x) in enumerate(region_starts(centers, (8, 8), (8, 8)).tolist()):
        torch.testing.assert_close(probs[0, :, y : y + 8, x : x + 8], p[n])


def test_batch_size_and_device_arguments_do_not_change_result():
    net = _net(mode="soft")
    img = torch.randn(1, 1, 33, 27)
    a, _ = FoveatedInferer(sw_batch_size=1, overlap=0.5, mode="gaussian")(img, net)
    b, _ = FoveatedInferer(sw_batch_size=64, overlap=0.5, mode="gaussian", sw_device="cpu", device="cpu")(img, net)
    torch.testing.assert_close(a, b)
    only = FoveatedInferer(return_apsm=False)(img, net)
    assert isinstance(only, torch.Tensor) and only.shape == (1, 2, 33, 27)
    affine = torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0], dtype=torch.float64))
    meta_out = FoveatedInferer(return_apsm=False)(MetaTensor(img, affine=affine), net)
    assert isinstance(meta_out, MetaTensor)
    torch.testing.assert_close(meta_out.affine.to(torch.float64), affine)
    torch.testing.assert_close(meta_out.as_tensor(), only)


def test_accumulate_predictions_hand_computed():
    out = torch.zeros(1, 4, 5)
    norm = torch.zeros(1, 4, 5)
    preds = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[10.0, 20.0], [30.0, 40.0]]]])
    starts = torch.tensor([[0, 0], [1, 1]])
    accumulate_predictions(out, norm, preds, starts, torch.tensor([[1.0, 1.0], [1.0, 3.0]]))
    expected_out = torch.tensor([[1, 2, 0, 0, 0], [3, 4 * 3 + 10, 20, 0, 0], [0, 30, 120, 0, 0], [0, 0, 0, 0, 0.0]])
    expected_norm = torch.tensor([[1, 1, 0, 0, 0], [1, 4, 1, 0, 0], [0, 1, 3, 0, 0], [0, 0, 0, 0, 0.0]])
    torch.testing.assert_close(out[0], expected_out)
    torch.testing.assert_close(norm[0], expected_norm)
    # a patch hanging over the edge adds only its inside pixels
    accumulate_predictions(out, norm, preds[:1], torch.tensor([[3, -1]]))
    assert out[0, 3].tolist() == [2.0, 0, 0, 0, 0] and norm[0, 3].tolist() == [1.0, 0, 0, 0, 0]


def test_scan_centers_cover_the_image():
    assert scan_centers((20,), (8,), 0.0).flatten().tolist() == [4, 12, 16]  # starts 0, 8, 12 (last at the edge)
    assert scan_centers((20,), (8,), 0.5).flatten().tolist() == [4, 8, 12, 16]
    assert scan_centers((5,), (8,), 0.0).flatten().tolist() == [4]
    with pytest.raises(ValueError, match="overlap"):
        scan_centers((20,), (8,), 1.0)


def test_bad_inputs():
    with pytest.raises(TypeError, match="FoveatedSegmenter"):
        FoveatedInferer()(torch.zeros(1, 1, 8, 8), nn.Identity())
    with pytest.raises(ValueError, match="inputs"):
        FoveatedInferer()(torch.zeros(1, 8, 8), _net())
