"""FoveatedSegmenter: modes, gradients, straight-through, fixed == backbone on one scale, weights sum to one."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from monai_fovea.networks import FOVEATION_MODES, FoveatedSegmenter
from monai_fovea.transforms import multiscale_patches


def _tiny_backbone(spatial_dims=2, in_channels=2, classes=3):
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return nn.Sequential(conv(in_channels, 4, 3, padding=1), nn.ReLU(), conv(4, classes, 1))


def _net(mode="soft", spatial_dims=2, **kw):
    torch.manual_seed(0)
    return FoveatedSegmenter(_tiny_backbone(spatial_dims), patch_sizes=[8, 16, 32], output_size=8,
                             spatial_dims=spatial_dims, in_channels=2, mode=mode, stride=8, **kw)


@pytest.mark.parametrize("mode", FOVEATION_MODES)
def test_weights_sum_to_one_and_shapes(mode):
    net = _net(mode)
    img = torch.randn(2, 48, 40)
    centers = torch.tensor([[4, 4], [20, 36], [44, 12]])
    logits, w = net(img, centers)
    assert logits.shape == (3, 3, 8, 8) and w.shape == (3, 3)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    if mode in ("hard", "fixed", "random"):
        assert set(w.detach().flatten().tolist()) <= {0.0, 1.0}
    if mode == "average":
        torch.testing.assert_close(w, torch.full((3, 3), 1 / 3))


def test_soft_gradients_reach_head_and_backbone():
    net = _net("soft")
    logits, w = net(torch.randn(2, 48, 48), torch.tensor([[8, 8], [30, 20]]))
    logits.square().mean().backward()
    for name, module in (("head", net.head), ("backbone", net.backbone)):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def test_hard_mode_is_one_hot_with_straight_through_gradient():
    net = _net("hard")
    img = torch.randn(2, 48, 48)
    centers = torch.tensor([[8, 8], [30, 20], [40, 40]])
    lowres = net.lowres(img[None])
    w_map = net.scale_weights(lowres)
    soft = torch.softmax(net.head(lowres, return_logits=True), 1)
    torch.testing.assert_close(w_map, nn.functional.one_hot(soft.argmax(1), 3).movedim(-1, 1).float())
    # the backward pass is the softmax's: d/dtheta of sum(w * g) equals that of sum(soft * g)
    g = torch.randn_like(w_map)
    net.zero_grad()
    (net.scale_weights(lowres) * g).sum().backward()
    hard_grad = [p.grad.clone() for p in net.head.parameters()]
    net.zero_grad()
    (torch.softmax(net.head(lowres, return_logits=True), 1) * g).sum().backward()
    for a, b in zip(hard_grad, [p.grad for p in net.head.parameters()]):
        torch.testing.assert_close(a, b)
    logits, _ = net(img, centers)
    logits.sum().backward()
    assert sum(float(p.grad.abs().sum()) for p in net.head.parameters()) > 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fixed_equals_backbone_on_that_scale_alone(spatial_dims):
    net = _net("fixed", spatial_dims=spatial_dims, fixed_index=1).eval()
    img = torch.randn(2, *([24] * spatial_dims))
    centers = torch.tensor([[12] * spatial_dims, [3] * spatial_dims])
    logits, w = net(img, centers)
    alone = net.backbone(multiscale_patches(img, centers, [16], 8)[:, 0])
    assert torch.equal(logits, alone)
    assert w[:, 1].tolist() == [1.0, 1.0]
    # the generic path (all scales, weighted sum) gives the same
    torch.testing.assert_close(net.forward_patches(net.extract_patches(img, centers), w), alone)


def test_soft_equals_weighted_sum_of_patches():
    net = _net("soft").eval()
    img = torch.randn(2, 40, 40)
    centers = torch.tensor([[10, 10], [30, 22]])
    logits, w = net(img, centers)
    patches = multiscale_patches(img, centers, [8, 16, 32], 8)
    mixed = sum(w[:, d, None, None, None] * patches[:, d] for d in range(3))
    torch.testing.assert_close(logits, net.backbone(mixed))
    # the weight of a centre is the head's output at its low-resolution cell (c // stride)
    wmap = net.head(net.lowres(img[None]))
    torch.testing.assert_close(w, torch.stack([wmap[0, :, 1, 1], wmap[0, :, 3, 2]]))


def test_random_is_per_location_and_fresh_each_call():
    net = _net("random")
    lowres = torch.zeros(1, 2, 16, 16)
    a, b = net.scale_weights(lowres), net.scale_weights(lowres)
    assert len(a.argmax(1).unique()) == 3  # different scales at different locations
    assert not torch.equal(a, b)


def test_gumbel_samples_in_training_and_softmax_in_eval():
    net = _net("gumbel")
    lowres = torch.randn(1, 2, 6, 6)
    w1, w2 = net.scale_weights(lowres), net.scale_weights(lowres)
    assert not torch.allclose(w1, w2)
    torch.testing.assert_close(w1.sum(1), torch.ones(1, 6, 6))
    net.eval()
    torch.testing.assert_close(net.scale_weights(lowres), net.head(lowres))


def test_apsm_and_target_patches_and_default_backbone():
    net = FoveatedSegmenter(None, [8, 16, (32, 8)], 8, spatial_dims=2, in_channels=1, num_classes=2)
    w = torch.tensor([[1.0, 0.0, 0.0], [0.25, 0.25, 0.5]])
    torch.testing.assert_close(net.average_patch_size(w), torch.tensor([8.0, 0.25 * 8 + 0.25 * 16 + 0.5 * 16]))
    lab = torch.arange(16 * 16).reshape(1, 16, 16)
    t = net.target_patches(lab, torch.tensor([[8, 8], [0, 0]]), ignore_index=-1)
    assert torch.equal(t[0], lab[0, 4:12, 4:12])
    assert int((t[1] == -1).sum()) == 64 - 16
    unet = FoveatedSegmenter(None, [32, 64], 32, spatial_dims=2, in_channels=1, num_classes=2)  # MONAI BasicUNet
    logits, _ = unet(torch.rand(1, 64, 64), torch.tensor([[16, 16]]))
    assert logits.shape == (1, 2, 32, 32)


class _Identity(nn.Module):
    def forward(self, x):
        return x


def test_output_fusion_crops_the_central_region_and_upsamples_bilinearly():
    """A linear ramp is reproduced exactly by bilinear interpolation: output pixel j of the 8-px region of a 32-px
    patch resampled to 8 px (the central 2 px, [3, 5)) sits at input coordinate 3 + (j + 0.5) / 4 - 0.5."""
    net = FoveatedSegmenter(_Identity(), patch_sizes=[8, 16, 32], output_size=8, in_channels=2, fusion="output")
    ramp = torch.stack([torch.arange(8.0).repeat(8, 1), torch.arange(8.0)[:, None].repeat(1, 8)])[None]
    expected = 3 + (torch.arange(8.0) + 0.5) / 4 - 0.5
    out = net.central_logits(ramp, 2)
    torch.testing.assert_close(out[0, 0], expected.repeat(8, 1))  # columns
    torch.testing.assert_close(out[0, 1], expected[:, None].repeat(1, 8))  # rows
    # the middle scale: the central 4 px of 8, each output pixel half an input pixel
    torch.testing.assert_close(net.central_logits(ramp, 1)[0, 0, 0], 2 + (torch.arange(8.0) + 0.5) / 2 - 0.5)
    assert torch.equal(net.central_logits(ramp, 0), ramp)
    # 3D, anisotropic FoV (16, 32, 8) around an 8^3 region: the axes keep their order (2x, 4x, 1x zoom)
    net3 = FoveatedSegmenter(_Identity(), patch_sizes=[8, (16, 32, 8)], output_size=8, spatial_dims=3,
                             in_channels=3, fusion="output")
    j = torch.arange(8.0)
    grid = torch.stack(torch.meshgrid(j, j, j, indexing="ij"))[None]
    out3 = net3.central_logits(grid, 1)[0]
    torch.testing.assert_close(out3[0, :, 0, 0], 2 + (j + 0.5) / 2 - 0.5)
    torch.testing.assert_close(out3[1, 0, :, 0], 3 + (j + 0.5) / 4 - 0.5)
    torch.testing.assert_close(out3[2, 0, 0, :], j)


def test_output_fusion_mixes_the_class_probabilities_of_the_scales():
    net = _net("soft", fusion="output").eval()
    img = torch.randn(2, 40, 40)
    centers = torch.tensor([[10, 10], [30, 22]])
    logits, w = net(img, centers)
    patches = multiscale_patches(img, centers, [8, 16, 32], 8)
    experts = [torch.softmax(net.central_logits(net.backbone(patches[:, d]), d), 1) for d in range(3)]
    mixture = sum(w[:, d, None, None, None] * experts[d] for d in range(3))
    torch.testing.assert_close(torch.softmax(logits, 1), mixture)
    torch.testing.assert_close(logits.exp().sum(1), torch.ones(2, 8, 8))  # log-probabilities
    # fixed: that scale's expert alone (the one-scale path's logits and the generic mixture's log-probabilities)
    fixed = _net("fixed", fusion="output", fixed_index=2).eval()
    fixed.load_state_dict(net.state_dict())
    flogits, fw = fixed(img, centers)
    torch.testing.assert_close(flogits, net.central_logits(net.backbone(patches[:, 2]), 2))
    torch.testing.assert_close(torch.softmax(fixed.forward_patches(patches, fw), 1), experts[2])


def test_output_fusion_gradient_moves_the_head_to_the_scale_that_predicts_the_location():
    """Class 0 everywhere; a backbone that is right (class 0) on the widest patch only: every head step raises the
    widest scale's weight (d loss / d f_d = -p_d(y) / sum_e f_e p_e(y), largest for the expert that is right)."""

    class ScaleTeller(nn.Module):  # logits (+5, 0) if the patch has the widest scale's marker value, else (0, +5)
        def forward(self, x):
            wide = (x[:, :1] > 1.5).float()
            return torch.cat([5 * wide, 5 * (1 - wide)], 1)

    net = FoveatedSegmenter(ScaleTeller(), patch_sizes=[8, 16, 32], output_size=8, in_channels=1, fusion="output")
    opt = torch.optim.SGD(net.head.parameters(), lr=0.5)
    img = torch.zeros(1, 32, 32)
    centers = torch.tensor([[16, 16]])
    patches = torch.zeros(1, 3, 1, 8, 8)
    patches[:, 2] = 2.0  # the widest scale's patch carries the marker
    before = net.weights_at(net.head(net.lowres(img[None])), centers)[0, 2].item()
    for _ in range(5):
        w = net.weights_at(net.scale_weights(net.lowres(img[None])), centers)
        loss = nn.functional.cross_entropy(net.forward_patches(patches, w), torch.zeros(1, 8, 8, dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = net.weights_at(net.head(net.lowres(img[None])), centers)[0, 2].item()
    assert after > before + 0.2


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        _net("best")
    with pytest.raises(ValueError, match="fixed_index"):
        _net("fixed", fixed_index=3)
    with pytest.raises(ValueError, match="num_classes"):
        FoveatedSegmenter(None, [8], 8)
    with pytest.raises(ValueError, match="weights"):
        _net().forward_patches(torch.zeros(2, 3, 2, 8, 8), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="fusion"):
        _net(fusion="late")
