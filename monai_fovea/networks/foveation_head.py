"""The foveation module of seed 000: a small CNN on the low-resolution image that outputs, per location, a
probability distribution over D patch scales (fields of view)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers import Conv, Norm

__all__ = ["FoveationHead"]


class FoveationHead(nn.Module):
    """conv3 + BN + ReLU6, conv3 + BN + ReLU6, conv3 -> D + BN, softmax over D (no biases, Kaiming-normal init).

    As the authors' code: channels ``(8 D, 8 D)`` by default (the paper's ``{40, 40, 5}`` for D = 5). Padding keeps
    the spatial size, so output pixel ``i`` holds the scale distribution of low-resolution pixel (location) ``i``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the low-resolution image.
        num_scales: D, the number of candidate patch scales.
        channels: the two hidden widths; ``None`` gives ``(8 D, 8 D)``.

    Returns (forward):
        ``[B, D, *S]`` weights that sum to 1 over D; ``forward(x, return_logits=True)`` gives the pre-softmax
        logits instead (for Gumbel-softmax).

    Example:
        >>> head = FoveationHead(2, in_channels=3, num_scales=5)
        >>> head(torch.rand(1, 3, 25, 25)).shape
        torch.Size([1, 5, 25, 25])
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, num_scales: int, channels: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}.")
        channels = tuple(channels) if channels is not None else (8 * num_scales, 8 * num_scales)
        if len(channels) != 2:
            raise ValueError(f"channels must hold the two hidden widths, got {channels}.")
        conv = Conv[Conv.CONV, spatial_dims]
        norm = Norm[Norm.BATCH, spatial_dims]
        self.spatial_dims = spatial_dims
        self.num_scales = num_scales
        self.layers = nn.Sequential(
            conv(in_channels, channels[0], kernel_size=3, padding=1, bias=False),
            norm(channels[0]),
            nn.ReLU6(inplace=True),
            conv(channels[0], channels[1], kernel_size=3, padding=1, bias=False),
            norm(channels[1]),
            nn.ReLU6(inplace=True),
            conv(channels[1], num_scales, kernel_size=3, padding=1, bias=False),
            norm(num_scales),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, return_logits: bool = False) -> torch.Tensor:
        logits = self.layers(x)
        return logits if return_logits else torch.softmax(logits, dim=1)
