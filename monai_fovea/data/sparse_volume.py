"""``SparseVolume``: the active voxels of a volume, and batching several of them into one spconv tensor.

A sparse volume keeps only its active (non-empty) voxels: integer coordinates with a leading batch index, in the
same axis order as the dense array (``coords[:, 1:]`` index ``array[:, i0, i1, ...]``), and one feature row per
voxel. This is the layout ``spconv.pytorch.SparseConvTensor`` takes, so :meth:`SparseVolume.to_spconv` is a view,
not a copy. spconv itself is imported lazily (only in ``to_spconv``/``from_spconv``).

Example::

    vol = SparseVolume(torch.tensor([[0, 1, 2, 3]], dtype=torch.int32), torch.ones(1, 1), (4, 4, 4))
    batch = collate_sparse([vol, vol])      # batch indices 0 and 1
    dense = batch.to_dense()                # [2, 1, 4, 4, 4]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

__all__ = ["SparseVolume", "collate_sparse", "linear_index"]


def linear_index(coords: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """One int64 key per voxel of ``coords`` ``[M, 1+ndim]`` (batch first): equal keys <=> equal voxels.

    Used to match active sets (set membership, unions) with ``torch.isin``/``torch.unique`` instead of a dense grid.
    """
    coords = coords.long()
    key = coords[:, 0].clone()
    for axis, size in enumerate(spatial_shape):
        key = key * int(size) + coords[:, axis + 1]
    return key


@dataclass
class SparseVolume:
    """Active voxels of one volume (or a batch of volumes).

    Args:
        coords: int32 ``[M, 1 + ndim]``; column 0 is the batch index, the others index the spatial axes.
        features: float ``[M, C]``, one row per coordinate.
        spatial_shape: the dense spatial shape ``S`` (without channels).
        affine: the voxel-to-world affine of the dense volume (``[4, 4]``, or ``[B, 4, 4]`` for a batch), or None.
        batch_size: number of volumes in the batch (``coords[:, 0] < batch_size``).
    """

    coords: torch.Tensor
    features: torch.Tensor
    spatial_shape: tuple[int, ...]
    affine: torch.Tensor | None = None
    batch_size: int = 1
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spatial_shape = tuple(int(s) for s in self.spatial_shape)
        if self.coords.ndim != 2 or self.coords.shape[1] != 1 + len(self.spatial_shape):
            raise ValueError(f"coords must be [M, 1 + ndim] = [M, {1 + len(self.spatial_shape)}] for spatial_shape "
                             f"{self.spatial_shape}, got {tuple(self.coords.shape)}.")
        if self.features.ndim != 2 or self.features.shape[0] != self.coords.shape[0]:
            raise ValueError(f"features must be [M, C] with M = len(coords) = {self.coords.shape[0]}, "
                             f"got {tuple(self.features.shape)}.")
        # contiguous: spconv silently mis-handles strided index tensors (e.g. straight from torch.nonzero)
        self.coords = self.coords.to(torch.int32).contiguous()
        self.features = self.features.contiguous()

    @property
    def ndim(self) -> int:
        return len(self.spatial_shape)

    @property
    def num_active(self) -> int:
        return int(self.coords.shape[0])

    def to(self, device: torch.device | str) -> SparseVolume:
        return replace(self, coords=self.coords.to(device), features=self.features.to(device))

    def to_spconv(self):
        """The ``spconv.pytorch.SparseConvTensor`` with these coordinates and features (no copy)."""
        from monai_fovea.networks._spconv import require_spconv

        spconv = require_spconv()
        return spconv.SparseConvTensor(self.features, self.coords, list(self.spatial_shape), self.batch_size)

    @classmethod
    def from_spconv(cls, tensor: Any, affine: torch.Tensor | None = None) -> SparseVolume:
        """Wrap a ``SparseConvTensor`` (e.g. a network output) as a ``SparseVolume``."""
        return cls(tensor.indices, tensor.features, tuple(int(s) for s in tensor.spatial_shape), affine,
                   int(tensor.batch_size))

    def to_dense(self, background: float = 0.0) -> torch.Tensor:
        """Dense ``[B, C, *S]`` tensor: features at the coordinates, ``background`` elsewhere."""
        from monai_fovea.transforms.sparse.functional import sparse_to_dense

        return sparse_to_dense(self.coords, self.features, self.spatial_shape, self.batch_size, background)


def collate_sparse(volumes: Sequence[Any]) -> Any:
    """Batch several sparse volumes into one (batch index = position in ``volumes``).

    ``volumes`` may also be a list of dictionaries (as a MONAI ``DataLoader`` yields them): ``SparseVolume`` values
    are batched with this function, all other values with MONAI's ``list_data_collate``. The batched spatial shape
    is the largest one along each axis (spconv needs a single shape per tensor).
    """
    if len(volumes) == 0:
        raise ValueError("collate_sparse: volumes is empty.")
    if isinstance(volumes[0], dict):
        from monai.data import list_data_collate

        sparse_keys = [k for k, v in volumes[0].items() if isinstance(v, SparseVolume)]
        rest = list_data_collate([{k: v for k, v in d.items() if k not in sparse_keys} for d in volumes])
        rest.update({k: collate_sparse([d[k] for d in volumes]) for k in sparse_keys})
        return rest
    if not all(isinstance(v, SparseVolume) for v in volumes):
        raise TypeError(f"collate_sparse: expected SparseVolume items, got {[type(v).__name__ for v in volumes]}.")
    ndims = {v.ndim for v in volumes}
    channels = {v.features.shape[1] for v in volumes}
    if len(ndims) != 1 or len(channels) != 1:
        raise ValueError(f"collate_sparse: volumes differ in ndim {ndims} or channels {channels}.")
    coords, offset = [], 0
    for vol in volumes:
        c = vol.coords.clone()
        c[:, 0] += offset
        coords.append(c)
        offset += vol.batch_size
    shape = tuple(max(v.spatial_shape[a] for v in volumes) for a in range(volumes[0].ndim))
    affine = None
    if all(v.affine is not None for v in volumes):
        affine = torch.cat([torch.as_tensor(v.affine, dtype=torch.float64).reshape(-1, 4, 4) for v in volumes])
    return SparseVolume(torch.cat(coords), torch.cat([v.features for v in volumes]), shape, affine, offset)
