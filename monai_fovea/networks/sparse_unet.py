"""``SparseUNet``: a U-Net on the active voxels only (segmentation of sparse volumes), built on spconv."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import math

import torch
from torch import nn

from monai_fovea.networks._spconv import require_spconv
from monai_fovea.networks.sparse_blocks import (
    algorithm_for_device,
    check_sparse_input,
    round_up_shape,
    sparse_conv_bn_relu,
    with_spatial_shape,
)

__all__ = ["SparseUNet"]


class SparseUNet(nn.Module):
    """U-Net whose every layer computes only at active voxels.

    Within a level, submanifold convolutions (the output active set equals the input's, so a thin shell stays
    thin); between levels, strided sparse convolutions (kernel = stride) go down and inverse convolutions (sharing
    the strided conv's index pairs) come back up to exactly the active set of the level above, whose features are
    concatenated as the skip connection. BatchNorm + ReLU after each convolution; a 1x1x1 submanifold head.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input feature channels.
        out_channels: output channels (logits).
        channels: feature channels per level (``len(strides) + 1`` entries).
        strides: downsampling factor between consecutive levels.
        num_convs: submanifold conv blocks per level (encoder and decoder).
        kernel_size: kernel of the submanifold convs.

    Forward: a ``spconv.pytorch.SparseConvTensor`` → a ``SparseConvTensor`` with the same active set (same indices,
    same order) and ``out_channels`` features. Use :class:`~monai_fovea.networks.sparse_as_dense.SparseAsDense` for
    dense tensors in and out.

    Raises:
        TypeError: (forward) the input is a dense tensor or anything but a ``SparseConvTensor``; the message says
            to wrap the network in ``SparseAsDense`` or convert with ``ToSparse``.
        ValueError: (forward) the input has no active voxel ("no active voxels: the input mask is empty").

    Example::

        net = SparseUNet(3, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2))
        logits = net(SparseVolume(...).to_spconv()).features     # [M, 2]
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 1,
                 channels: Sequence[int] = (8, 16, 32), strides: Sequence[int] = (2, 2), num_convs: int = 2,
                 kernel_size: int = 3) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if len(channels) != len(strides) + 1:
            raise ValueError(f"channels needs len(strides) + 1 = {len(strides) + 1} entries, got {len(channels)}.")
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}.")
        spconv = require_spconv()
        self.spatial_dims = spatial_dims
        self.out_channels = out_channels
        self.strides = tuple(int(s) for s in strides)
        self.total_stride = math.prod(self.strides)

        def level(cin: int, cout: int, key: str) -> nn.Module:
            return spconv.SparseSequential(*[
                sparse_conv_bn_relu(spatial_dims, "subm", cin if i == 0 else cout, cout, kernel_size, indice_key=key)
                for i in range(num_convs)])

        self.stem = level(in_channels, channels[0], "subm0")
        self.down = nn.ModuleList()
        self.enc = nn.ModuleList()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i, s in enumerate(self.strides):
            self.down.append(sparse_conv_bn_relu(spatial_dims, "down", channels[i], channels[i + 1], s, s,
                                                 indice_key=f"down{i}"))
            self.enc.append(level(channels[i + 1], channels[i + 1], f"subm{i + 1}"))
            self.up.append(sparse_conv_bn_relu(spatial_dims, "inverse", channels[i + 1], channels[i], s,
                                               indice_key=f"down{i}"))
            self.dec.append(level(2 * channels[i], channels[i], f"subm{i}"))
        subm = getattr(spconv, f"SubMConv{spatial_dims}d")
        self.head = subm(channels[0], out_channels, 1, bias=True, indice_key="head")
        self.head.register_forward_pre_hook(algorithm_for_device)

    def forward(self, x: Any) -> Any:
        check_sparse_input(x, type(self).__name__)
        in_shape = [int(s) for s in x.spatial_shape]
        # a strided conv drops voxels beyond the last full window: pad the grid to a multiple of the total stride
        h = with_spatial_shape(x, round_up_shape(in_shape, self.total_stride))
        skips = []
        h = self.stem(h)
        for down, enc in zip(self.down, self.enc):
            skips.append(h)
            h = enc(down(h))
        for i in reversed(range(len(self.strides))):
            h = self.up[i](h)
            skip = skips[i]
            h = self.dec[i](h.replace_feature(torch.cat([h.features, skip.features], 1)))
        out = self.head(h)
        out.spatial_shape = in_shape
        return out
