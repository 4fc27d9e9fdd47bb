"""Building blocks shared by the sparse networks: conv + BN + ReLU stacks, active-set union and selection.

spconv is imported lazily through :func:`monai_fovea.networks._spconv.require_spconv`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from monai_fovea.data.sparse_volume import linear_index
from monai_fovea.networks._spconv import require_spconv

__all__ = ["check_sparse_input", "EMPTY_INPUT_MESSAGE", "VoxelBatchNorm", "sparse_conv_bn_relu", "algorithm_for_device", "compact_out_indices", "sparse_union", "select_voxels", "with_spatial_shape", "dense_to_spconv",
           "spconv_to_dense", "round_up_shape"]

_CONV_KIND = {"subm": "SubMConv{}d", "down": "SparseConv{}d", "inverse": "SparseInverseConv{}d",
              "transpose": "SparseConvTranspose{}d"}


#: the one wording of "nothing to compute on", shared by the sparse networks and ``SparseInferer``
EMPTY_INPUT_MESSAGE = "no active voxels: the input mask is empty"


def check_sparse_input(x: Any, network: str) -> None:
    """Refuse what a sparse network cannot run on, with a message that says what to pass instead.

    spconv's own errors for these inputs are "'Tensor' object has no attribute 'spatial_shape'" (a dense tensor)
    and an internal C++ assert "tensor must not empty" (no active voxel).

    Args:
        x: the network's input, expected to be a ``spconv.pytorch.SparseConvTensor``.
        network: the network's name, for the message.

    Raises:
        TypeError: ``x`` is a dense tensor, a ``SparseVolume`` or anything else that is not a ``SparseConvTensor``.
        ValueError: ``x`` has no active voxel.

    Example:
        >>> try:
        ...     check_sparse_input(torch.zeros(1, 1, 4, 4, 4), "SparseUNet")
        ... except TypeError as err:
        ...     print(str(err).split(",")[0])
        SparseUNet takes a spconv SparseConvTensor
    """
    from monai_fovea.data.sparse_volume import SparseVolume

    if isinstance(x, torch.Tensor):
        raise TypeError(
            f"{network} takes a spconv SparseConvTensor, got a dense torch.Tensor of shape {tuple(x.shape)}. "
            f"Wrap the network as SparseAsDense({network}(...)) to pass dense [B, C, *S] tensors, or convert the "
            "image first: ToSparse()(img).to_spconv() (a SparseVolume's .to_spconv())."
        )
    if isinstance(x, SparseVolume):
        raise TypeError(f"{network} takes a spconv SparseConvTensor, got a SparseVolume: pass volume.to_spconv().")
    if not all(hasattr(x, a) for a in ("features", "indices", "spatial_shape")):
        raise TypeError(
            f"{network} takes a spconv SparseConvTensor, got {type(x).__name__}. Build one with "
            "ToSparse()(img).to_spconv(), or wrap the network as SparseAsDense(...) for dense tensors."
        )
    if x.features.shape[0] == 0:
        raise ValueError(
            f"{network}: {EMPTY_INPUT_MESSAGE} (0 of {'x'.join(str(int(s)) for s in x.spatial_shape)} voxels active). "
            "Check the mask/threshold that built the input; SparseAsDense returns its background for empty inputs."
        )


class VoxelBatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` over the active voxels ``[M, C]`` that also accepts ``M <= 1`` in training (a coarse level of
    a small volume can hold a single voxel): it then normalises with the running statistics instead of failing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] <= 1:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False,
                                            0.0, self.eps)
        return super().forward(x)


def sparse_conv_bn_relu(spatial_dims: int, kind: str, in_channels: int, out_channels: int, kernel_size: int = 3,
                        stride: int = 1, padding: int = 0, indice_key: str | None = None) -> nn.Module:
    """``SparseSequential(conv, BatchNorm1d, ReLU)``; ``kind`` is ``subm`` (submanifold: keeps the active set),
    ``down`` (strided), ``inverse`` (restores the active set of the strided conv with the same ``indice_key``) or
    ``transpose`` (generative: creates every child voxel)."""
    spconv = require_spconv()
    conv_cls = getattr(spconv, _CONV_KIND[kind].format(spatial_dims))
    kwargs: dict[str, Any] = {"bias": False, "indice_key": indice_key}
    if kind in ("inverse", "subm"):  # stride/padding are implied (inverse: those of the paired strided conv)
        conv = conv_cls(in_channels, out_channels, kernel_size, **kwargs)
    else:
        conv = conv_cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding, **kwargs)
    conv.register_forward_pre_hook(algorithm_for_device)
    if kind in ("down", "transpose"):
        conv.register_forward_hook(compact_out_indices)
    return spconv.SparseSequential(conv, VoxelBatchNorm(out_channels), nn.ReLU())


def compact_out_indices(conv: nn.Module, args: tuple, out: Any) -> Any:
    """Forward hook of strided and transposed sparse convs: keep the output coordinates, not spconv's work buffer.

    spconv's CPU index generation (``SpconvOps.get_indice_pairs``) allocates the output coordinates of a strided or
    transposed conv for the worst case, ``kernel volume x input voxels`` rows, and returns a view of the rows it used.
    That view becomes the output's ``indices`` (and, with an ``indice_key``, the coordinates kept for the paired
    inverse conv), so it holds the whole buffer as long as the level lives: for a k2 s2 conv in 3D, 8 rows per input
    voxel, of which about 4 % were used on the CT skull's edge shell (``benchmarks/sparse_memory.py``: the index
    data a SparseUNet step keeps went from 85 to 61 MB). A copy of the used rows lets the buffer go. The rows never
    written were never resident on the CPU, so this lowers the bytes held by tensors and the address space, not the
    peak RSS. Values and order are unchanged; where the buffer is already exact (spconv's CUDA path) nothing is copied.
    """
    idx = out.indices
    if idx.untyped_storage().nbytes() <= 2 * idx.nelement() * idx.element_size():
        return None
    compact = idx.clone()
    data = out.indice_dict.get(conv.indice_key) if conv.indice_key is not None else None
    if data is not None and getattr(data, "out_indices", None) is idx:
        data.out_indices = compact
    out.indices = compact
    return out


def algorithm_for_device(conv: nn.Module, args: tuple) -> None:
    """Pick spconv's algorithm from where the input lives, at every call.

    spconv's CUDA builds default to implicit GEMM, which has no CPU kernels ("implicit gemm only support cuda"), so
    a model built on a GPU machine could not run ``.cpu()``; its CPU build only has the native algorithm. Choosing
    per call lets one model train on a GPU and infer on a CPU (and back). All convs of a network see the same
    device, so layers that share index pairs (``indice_key``) always agree on the algorithm, as spconv requires.
    """
    from spconv.core import ConvAlgo

    if not hasattr(conv, "_gpu_algo"):
        conv._gpu_algo = conv.algo  # what spconv chose for this build at construction
    conv.algo = conv._gpu_algo if args[0].features.is_cuda else ConvAlgo.Native


def with_spatial_shape(x: Any, spatial_shape: Sequence[int], keep: torch.Tensor | None = None) -> Any:
    """A new ``SparseConvTensor`` with (optionally a subset of) ``x``'s voxels and another spatial shape.

    A fresh tensor (no cached index pairs) so the next convolution computes its neighbourhoods anew."""
    spconv = require_spconv()
    feats, idx = (x.features, x.indices) if keep is None else (x.features[keep], x.indices[keep])
    return spconv.SparseConvTensor(feats.contiguous(), idx.contiguous(), [int(s) for s in spatial_shape], x.batch_size)


def select_voxels(x: Any, keep: torch.Tensor) -> Any:
    """The voxels of ``x`` where the bool ``keep`` ``[M]`` is True (pruning)."""
    return with_spatial_shape(x, x.spatial_shape, keep)


def sparse_union(a: Any, b: Any) -> Any:
    """Union of two sparse tensors with the same spatial shape and channels; features are summed where both are
    active (the decoder's skip connection: generated voxels plus the encoder's voxels at the same stride)."""
    spconv = require_spconv()
    shape = [int(s) for s in a.spatial_shape]
    idx = torch.cat([a.indices, b.indices])
    keys = linear_index(idx, shape)
    uniq, inverse = torch.unique(keys, return_inverse=True)
    feats = torch.zeros(len(uniq), a.features.shape[1], dtype=a.features.dtype, device=a.features.device)
    feats = feats.index_add(0, inverse, torch.cat([a.features, b.features]))
    coords = torch.empty(len(uniq), idx.shape[1], dtype=idx.dtype, device=idx.device)
    coords[inverse] = idx
    return spconv.SparseConvTensor(feats, coords, shape, max(a.batch_size, b.batch_size))


def round_up_shape(spatial_shape: Sequence[int], multiple: int) -> list[int]:
    """Each size rounded up to a multiple of ``multiple`` (strided convs then halve shapes exactly)."""
    return [-(-int(s) // multiple) * multiple for s in spatial_shape]


def dense_to_spconv(x: torch.Tensor, threshold: float = 0.0) -> Any:
    """Dense ``[B, C, *S]`` → ``SparseConvTensor`` of the voxels where any channel is ``> threshold`` (features =
    the channel values)."""
    spconv = require_spconv()
    active = (x > threshold).any(1)
    idx = torch.nonzero(active)
    feats = x.movedim(1, -1)[active]
    # spconv silently mis-handles non-contiguous indices (torch.nonzero's are column-major): force row-major
    return spconv.SparseConvTensor(feats.contiguous(), idx.int().contiguous(), list(x.shape[2:]), x.shape[0])


def spconv_to_dense(x: Any, spatial_shape: Sequence[int] | None = None, background: float = 0.0) -> torch.Tensor:
    """``SparseConvTensor`` → dense ``[B, C, *S]`` with ``background`` at inactive voxels (differentiable)."""
    from monai_fovea.transforms.sparse.functional import sparse_to_dense

    shape = [int(s) for s in (spatial_shape if spatial_shape is not None else x.spatial_shape)]
    idx, feats = x.indices, x.features
    inside = ((idx[:, 1:] < torch.tensor(shape, device=idx.device)).all(1))
    return sparse_to_dense(idx[inside], feats[inside], shape, x.batch_size, background)
