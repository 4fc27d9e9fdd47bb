"""FoveationHead: layer structure of the seed, weights sum to one, 2D and 3D, init and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from monai_fovea.networks import FoveationHead


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_head_outputs_distribution_over_scales(spatial_dims):
    torch.manual_seed(0)
    head = FoveationHead(spatial_dims, in_channels=3, num_scales=5)
    x = torch.randn(2, 3, *([9] * spatial_dims))
    w = head(x)
    assert w.shape == (2, 5, *([9] * spatial_dims))
    torch.testing.assert_close(w.sum(1), torch.ones(2, *([9] * spatial_dims)))
    assert bool((w >= 0).all())
    torch.testing.assert_close(torch.softmax(head(x, return_logits=True), 1), w)


def test_head_structure_matches_seed():
    head = FoveationHead(2, in_channels=3, num_scales=5)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 40, (3, 3)), (40, 40, (3, 3)), (40, 5, (3, 3))]  # the paper's {40, 40, 5} for D = 5
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in head.modules()) == 3
    assert sum(isinstance(m, nn.ReLU6) for m in head.modules()) == 2
    # Kaiming normal (fan_out, relu): std = sqrt(2 / (out * 9)); the 3x3x3x40 tensor has 1080 samples
    std = convs[0].weight.std().item()
    assert abs(std - (2 / (40 * 9)) ** 0.5) < 0.15 * (2 / (40 * 9)) ** 0.5
    custom = FoveationHead(3, in_channels=1, num_scales=3, channels=(4, 6))
    convs3 = [m for m in custom.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs3] == [4, 6, 3]


def test_head_bad_arguments():
    with pytest.raises(ValueError, match="spatial_dims"):
        FoveationHead(1, 3, 5)
    with pytest.raises(ValueError, match="channels"):
        FoveationHead(2, 3, 5, channels=(8,))
