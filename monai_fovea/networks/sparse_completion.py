"""``SparseCompletionNet``: the seed-002 generative sparse network that adds voxels absent from its input.

The skull-completion network of "sparse CNNs at full resolution" (REFERENCE.md §3): a sparse encoder halves the
grid level by level; the decoder's transposed convolutions generate every child voxel of the coarser level, a
1x1 occupancy classifier scores them and pruning keeps the likely ones, so the output can contain voxels (the
implant) that the input (the defective skull's surface) never had.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from monai_fovea.data.sparse_volume import linear_index
from monai_fovea.networks._spconv import require_spconv
from monai_fovea.networks.sparse_blocks import (
    check_sparse_input,
    round_up_shape,
    select_voxels,
    sparse_conv_bn_relu,
    sparse_union,
    with_spatial_shape,
)

__all__ = ["SparseCompletionNet"]

#: the seed's tiny channel variant, small enough for CPU training at full resolution
TINY_CHANNELS = (2, 2, 4, 4, 4, 4, 16)


class SparseCompletionNet(nn.Module):
    """Generative sparse encoder-decoder for shape completion (seed 002).

    * stem: submanifold conv k3 (``in_channels → channels[0]``);
    * encoder level ``i``: [sparse conv k2 s2, submanifold conv k3], BN + ReLU;
    * decoder level ``i`` (coarse to fine): generative transposed conv k2 s2 (k4, padding 1 at the coarsest
      level so that it also grows into neighbouring cells), BN + ReLU, submanifold conv k3, union with the encoder
      features at that stride (sum where both exist), 1x1 occupancy classifier, and pruning to the voxels with
      logit > 0 -- plus, in training, the voxels of the target so that the finer levels see them.

    The finest level is not pruned: its voxels and logits are the output (a voxel absent from the output is
    predicted empty).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input feature channels (1 for an occupancy shell).
        channels: channels per level, ``channels[0]`` at full resolution; ``len(channels) - 1`` levels of stride 2.
            Default: the seed's tiny variant ``(2, 2, 4, 4, 4, 4, 16)``.
        first_kernel: kernel of the coarsest transposed conv (4 as in the seed, or 2).

    Forward: ``SparseConvTensor`` → ``SparseConvTensor`` of occupancy logits ``[N, 1]`` on the generated voxels
    (same spatial shape). :meth:`forward_levels` also returns every level's logits; :meth:`loss` is the seed's
    multi-level BCE.

    Raises:
        TypeError: (forward, loss) the input is a dense tensor or anything but a ``SparseConvTensor``; the message
            says to wrap the network in ``SparseAsDense`` or convert with ``ToSparse``.
        ValueError: (forward, loss) the input has no active voxel ("no active voxels: the input mask is empty").

    Example::

        net = SparseCompletionNet(3, channels=(4, 8, 8, 16))
        loss, per_level = net.loss(shell.to_spconv(), target_coords)    # target = shell + implant voxels
        pred = net.eval()(shell.to_spconv())                            # pred.features > 0 -> occupied
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, channels: Sequence[int] = TINY_CHANNELS,
                 first_kernel: int = 4) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if len(channels) < 2:
            raise ValueError(f"channels needs at least two entries (one downsampling), got {channels}.")
        if first_kernel not in (2, 4):
            raise ValueError(f"first_kernel must be 2 or 4, got {first_kernel}.")
        spconv = require_spconv()
        self.spatial_dims = spatial_dims
        self.out_channels = 1
        self.channels = tuple(int(c) for c in channels)
        self.num_levels = len(channels) - 1
        self.total_stride = 2**self.num_levels
        self.stem = sparse_conv_bn_relu(spatial_dims, "subm", in_channels, channels[0], 3)
        self.encoder = nn.ModuleList([
            spconv.SparseSequential(sparse_conv_bn_relu(spatial_dims, "down", channels[i], channels[i + 1], 2, 2),
                                    sparse_conv_bn_relu(spatial_dims, "subm", channels[i + 1], channels[i + 1], 3))
            for i in range(self.num_levels)])
        self.generate = nn.ModuleList()
        self.refine = nn.ModuleList()
        self.classify = nn.ModuleList()
        for i in range(self.num_levels):  # decoder level i produces stride 2**i from stride 2**(i + 1)
            coarsest = i == self.num_levels - 1
            k, p = (first_kernel, (first_kernel - 2) // 2) if coarsest else (2, 0)
            self.generate.append(sparse_conv_bn_relu(spatial_dims, "transpose", channels[i + 1], channels[i], k, 2, p))
            self.refine.append(sparse_conv_bn_relu(spatial_dims, "subm", channels[i], channels[i], 3))
            self.classify.append(nn.Linear(channels[i], 1))

    def forward_levels(self, x: Any, target: torch.Tensor | None = None) -> list[Any]:
        """Occupancy logits of every decoder level, coarse to fine (the last one is the output).

        Args:
            x: the input ``SparseConvTensor``.
            target: int coordinates ``[N, 1 + ndim]`` (batch first) of the ground-truth voxels at full resolution;
                in training mode their voxels are kept through pruning at every level.

        Raises:
            TypeError: ``x`` is not a ``SparseConvTensor``.
            ValueError: ``x`` has no active voxel.
        """
        check_sparse_input(x, type(self).__name__)
        in_shape = [int(s) for s in x.spatial_shape]
        shape = round_up_shape(in_shape, self.total_stride)
        h = self.stem(with_spatial_shape(x, shape))
        skips = [h]
        for enc in self.encoder:
            h = enc(h)
            skips.append(h)
        outputs = []
        for i in reversed(range(self.num_levels)):
            h = self.generate[i](h)
            level_shape = [s // 2**i for s in shape]
            h = with_spatial_shape(h, level_shape, self._inside(h.indices, level_shape))
            h = sparse_union(self.refine[i](h), skips[i])
            logits = self.classify[i](h.features)
            outputs.append(h.replace_feature(logits))
            if i == 0:
                break
            keep = logits[:, 0] > 0
            if self.training and target is not None:
                keep = keep | self.occupancy_labels(h.indices, target, 2**i, level_shape).bool()
            if not keep.any():  # nothing predicted: finer levels would be empty too
                break
            h = select_voxels(h, keep)
        out = outputs[-1]
        if outputs[-1].features.shape[0] and len(outputs) == self.num_levels:
            inside = self._inside(out.indices, in_shape)
            outputs[-1] = with_spatial_shape(out, in_shape, inside)
        return outputs

    def forward(self, x: Any) -> Any:
        """Occupancy logits ``[N, 1]`` at full resolution on the generated voxels (a ``SparseConvTensor``);
        an empty tensor when pruning removed everything at a coarser level."""
        levels = self.forward_levels(x)
        if len(levels) < self.num_levels:
            spconv = require_spconv()
            ref = x.features
            return spconv.SparseConvTensor(ref.new_zeros(0, 1), x.indices[:0], list(x.spatial_shape), x.batch_size)
        return levels[-1]

    @staticmethod
    def _inside(indices: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        coords = indices[:, 1:]
        return ((coords >= 0) & (coords < torch.tensor(list(shape), device=coords.device))).all(1)

    @staticmethod
    def occupancy_labels(indices: torch.Tensor, target: torch.Tensor, stride: int, level_shape: Sequence[int]) -> torch.Tensor:
        """1.0 where the voxel at ``indices`` (grid of the given ``stride``) contains a target voxel, else 0.0."""
        t = target.long().clone()
        t[:, 1:] = torch.div(t[:, 1:], stride, rounding_mode="floor")
        target_keys = torch.unique(linear_index(t, level_shape))
        return torch.isin(linear_index(indices, level_shape), target_keys).float()

    def loss(self, x: Any, target: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Sum over levels of BCE-with-logits, target = voxel present in the ground truth at that level's stride.

        Returns:
            ``(total, per_level)`` with ``per_level`` coarse to fine.
        """
        levels = self.forward_levels(x, target)
        per_level = []
        for j, out in enumerate(levels):
            stride = 2 ** (self.num_levels - 1 - j)
            shape = [int(s) for s in out.spatial_shape]
            labels = self.occupancy_labels(out.indices, target, stride, shape)
            per_level.append(nn.functional.binary_cross_entropy_with_logits(out.features[:, 0], labels))
        return torch.stack(per_level).sum(), per_level
