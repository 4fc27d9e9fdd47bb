"""``SparseAsDense``: run a sparse network on dense tensors, so MONAI inferers, transforms and bundle checks work."""

from __future__ import annotations

import torch
from torch import nn

from monai_fovea.networks.sparse_blocks import dense_to_spconv, spconv_to_dense

__all__ = ["SparseAsDense"]


class SparseAsDense(nn.Module):
    """Dense ``[B, C, *S]`` in → sparse inside → dense ``[B, C_out, *S]`` out.

    The voxels where any input channel is ``> threshold`` become the active set (features = the channel values);
    the wrapped network's sparse output is scattered back onto the dense grid, with ``background`` at the voxels it
    did not produce. Use a negative ``background`` (e.g. ``-20``) for occupancy logits, so that an absent voxel reads
    as "empty" after a sigmoid or ``> 0``.

    An all-empty input (no voxel ``> threshold``) gives an all-``background`` output without calling the network
    (spconv cannot run on an empty set): the windows of a sliding-window inferer or the volumes of a batch may
    legitimately be empty. A whole input that must not be empty is refused upstream: ``SparseInferer`` raises a
    ``ValueError`` on it, and the bundles refuse an empty mask naming the file.

    Args:
        net: a sparse network (``SparseConvTensor`` → ``SparseConvTensor``), e.g. ``SparseUNet`` or
            ``SparseCompletionNet``.
        threshold: activity threshold of the dense input.
        background: value written where the network produced no voxel.
        out_channels: channels of the output (needed for empty inputs); taken from ``net.out_channels`` or 1.

    Raises:
        TypeError: (forward) the input is a spconv ``SparseConvTensor`` or a ``SparseVolume`` (give those to the
            wrapped network itself) rather than a dense tensor.
        ValueError: (forward) the input is not ``[B, C, *S]``.

    Example::

        model = SparseAsDense(SparseUNet(3, 1, 2, channels=(8, 16)), background=0.0)
        logits = model(torch.zeros(1, 1, 32, 32, 32))      # [1, 2, 32, 32, 32]
    """

    def __init__(self, net: nn.Module, threshold: float = 0.0, background: float = 0.0,
                 out_channels: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.threshold = threshold
        self.background = background
        self.out_channels = out_channels or getattr(net, "out_channels", 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) and hasattr(x, "spatial_shape"):
            raise TypeError(
                f"SparseAsDense takes a dense [B, C, *S] tensor, got {type(x).__name__}: pass sparse inputs to the "
                "wrapped network (SparseAsDense(...).net) directly, or densify them first (SparseToDense)."
            )
        if hasattr(x, "as_tensor"):  # MetaTensor: spconv wants plain tensors; meta is the caller's to keep
            x = x.as_tensor()
        x = torch.as_tensor(x)
        if x.ndim < 3:
            raise ValueError(f"SparseAsDense expects a dense [B, C, *S] tensor, got shape {tuple(x.shape)}.")
        spatial = list(x.shape[2:])
        if not bool((x > self.threshold).any()):
            return x.new_full((x.shape[0], self.out_channels, *spatial), float(self.background))
        out = self.net(dense_to_spconv(x.float(), self.threshold))
        if out.features.shape[0] == 0:
            return x.new_full((x.shape[0], self.out_channels, *spatial), float(self.background))
        dense = spconv_to_dense(out, spatial, self.background)
        if dense.shape[0] < x.shape[0]:  # trailing empty volumes in the batch
            pad = dense.new_full((x.shape[0] - dense.shape[0], *dense.shape[1:]), float(self.background))
            dense = torch.cat([dense, pad])
        return dense
