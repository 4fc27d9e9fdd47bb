"""Array transforms of the sparse strategy: ``ToSparse``, ``SparseToDense``, ``EdgeShell``, ``RandSkullDefect``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Randomizable, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from monai_fovea.data.sparse_volume import SparseVolume
from monai_fovea.transforms.sparse import functional as F

__all__ = ["ToSparse", "SparseToDense", "EdgeShell", "RandSkullDefect"]


def _affine_of(img: Any) -> torch.Tensor | None:
    return img.affine.clone().to(torch.float64) if isinstance(img, MetaTensor) else None


class ToSparse(Transform):
    """Dense channel-first image ``[C, *S]`` → :class:`~monai_fovea.data.sparse_volume.SparseVolume`.

    Args:
        threshold: a voxel is active when any channel is ``> threshold``.
        features: ``"ones"`` (one feature 1.0 per active voxel, the seed's input for masks) or ``"intensity"``
            (the ``C`` channel values).

    Returns:
        a ``SparseVolume`` with batch index 0, the spatial shape, and the affine of a ``MetaTensor`` input.

    Example::

        vol = ToSparse()(MetaTensor(mask[None], affine=affine))   # vol.coords [M, 4], vol.features [M, 1]
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, threshold: float = 0.0, features: str = "ones") -> None:
        if features not in ("ones", "intensity"):
            raise ValueError(f"features must be 'ones' or 'intensity', got {features!r}.")
        self.threshold = threshold
        self.features = features

    def __call__(self, img: NdarrayOrTensor) -> SparseVolume:
        tensor = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img)
        coords, feats = F.dense_to_sparse(tensor, self.threshold, self.features)
        meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
        return SparseVolume(coords, feats, tuple(tensor.shape[1:]), _affine_of(img), 1, meta)


class SparseToDense(Transform):
    """:class:`SparseVolume` → dense ``MetaTensor`` (``[C, *S]`` for one volume, ``[B, C, *S]`` for a batch), with
    the volume's affine; the exact inverse of :class:`ToSparse` on the active voxels.

    Args:
        background: value of the inactive voxels.

    Returns:
        a ``MetaTensor`` (float features' dtype).

    Example::

        dense = SparseToDense()(ToSparse(features="intensity")(img))   # == img where img > 0, else 0
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, background: float = 0.0) -> None:
        self.background = background

    def __call__(self, vol: SparseVolume) -> MetaTensor:
        if not isinstance(vol, SparseVolume):
            raise TypeError(f"SparseToDense expects a SparseVolume, got {type(vol).__name__}.")
        dense = vol.to_dense(self.background)
        affine = vol.affine
        if vol.batch_size == 1:
            dense = dense[0]
            affine = None if affine is None else affine.reshape(-1, 4, 4)[0]
        meta = dict(vol.meta)
        if affine is not None:
            meta["affine"] = affine
        return MetaTensor(dense, meta=meta)


class EdgeShell(Transform):
    """Mask minus its erosion (``mask XOR erosion`` for binary masks): the seed's one-voxel-thick skull surface.

    Works on dense ``[C, *S]`` arrays / tensors / MetaTensors (the result has the input's type, dtype and meta) and
    on :class:`SparseVolume` (keeps the active voxels on the shell, computed on the active set only).

    Args:
        thickness: number of erosion steps (shell thickness in voxels).
        connectivity: structuring element as in ``scipy.ndimage.generate_binary_structure`` (1 = face
            neighbours, ``ndim`` = full cube).

    Returns:
        the shell, as the input's type.

    Example::

        shell = EdgeShell()(skull_mask)     # a 5^3 cube → 98 voxels (125 - 27)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, thickness: int = 1, connectivity: int = 1) -> None:
        if thickness < 1:
            raise ValueError(f"thickness must be >= 1, got {thickness}.")
        self.thickness = thickness
        self.connectivity = connectivity

    def __call__(self, img: NdarrayOrTensor | SparseVolume) -> NdarrayOrTensor | SparseVolume:
        if isinstance(img, SparseVolume):
            if img.batch_size != 1:
                # erosion per volume would need a per-batch loop; batch after the transform instead.
                raise ValueError("EdgeShell on a SparseVolume expects one volume (batch_size 1); batch after it.")
            keep = F.sparse_edge_shell(img.coords, img.spatial_shape, self.thickness, self.connectivity)
            return replace(img, coords=img.coords[keep], features=img.features[keep])
        tensor = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img)
        shell = F.edge_shell(tensor > 0, self.thickness, self.connectivity)
        out, *_ = convert_to_dst_type(shell, img, dtype=img.dtype)
        return out


class RandSkullDefect(Randomizable, Transform):
    """AutoImplant-style synthetic defect cut into a binary skull mask ``[1, *S]``.

    A random voxel of the skull in the upper ``vault_fraction`` of its extent along ``superior_axis`` (the cranial
    vault) is the centre of a cube, a ball or an irregular union of balls with a radius drawn from
    ``radius_range`` (voxels). The skull voxels inside the region form the implant, the rest the defective skull:
    their union is the complete skull and they are disjoint.

    Args:
        radius_range: (min, max) radius (half side for cubes) in voxels.
        shapes: the shapes drawn from, uniformly.
        superior_axis: the spatial axis pointing to the top of the head (last axis for RAS NIfTI volumes).
        vault_fraction: the upper fraction of the skull's extent where defect centres are drawn.
        superior_is_high: whether "up" is the high end of ``superior_axis``.

    Returns:
        ``(defective_skull, implant)``, each the input's type, dtype and meta.

    Example::

        defective, implant = RandSkullDefect((8, 16)).set_random_state(0)(skull)
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, radius_range: Sequence[float] = (8, 16), shapes: Sequence[str] = F.DEFECT_SHAPES,
                 superior_axis: int = -1, vault_fraction: float = 0.5, superior_is_high: bool = True) -> None:
        if len(radius_range) != 2 or not 0 < radius_range[0] <= radius_range[1]:
            raise ValueError(f"radius_range must be (min, max) with 0 < min <= max, got {radius_range}.")
        bad = [s for s in shapes if s not in F.DEFECT_SHAPES]
        if bad or not shapes:
            raise ValueError(f"shapes must be a non-empty subset of {F.DEFECT_SHAPES}, got {shapes}.")
        self.radius_range = tuple(float(r) for r in radius_range)
        self.shapes = tuple(shapes)
        self.superior_axis = superior_axis
        self.vault_fraction = vault_fraction
        self.superior_is_high = superior_is_high
        self._region: np.ndarray | None = None

    def randomize(self, mask: np.ndarray) -> None:
        center = F.choose_defect_center(mask, self.R, self.superior_axis, self.vault_fraction, self.superior_is_high)
        shape = self.shapes[self.R.randint(len(self.shapes))]
        radius = self.R.uniform(*self.radius_range)
        self._region = F.defect_region(mask.shape, center, radius, shape, self.R)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        if img.shape[0] != 1:
            raise ValueError(f"RandSkullDefect expects a single-channel mask [1, *S], got shape {tuple(img.shape)}.")
        mask = np.asarray(torch.as_tensor(img).detach().cpu().numpy() if isinstance(img, torch.Tensor) else img)[0] > 0
        if randomize or self._region is None:
            self.randomize(mask)
        implant = (mask & self._region)[None]
        defective = (mask & ~self._region)[None]
        out_def, *_ = convert_to_dst_type(defective, img, dtype=img.dtype)
        out_imp, *_ = convert_to_dst_type(implant, img, dtype=img.dtype)
        return out_def, out_imp
