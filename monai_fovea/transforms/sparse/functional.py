"""Pure tensor functions of the sparse strategy (dense <-> sparse, edge shells, synthetic skull defects).

Coordinates are int32 ``[M, 1 + ndim]`` with the batch index first (spconv's layout), features float ``[M, C]``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from monai_fovea.data.sparse_volume import linear_index

__all__ = [
    "dense_to_sparse",
    "sparse_to_dense",
    "erode",
    "edge_shell",
    "sparse_edge_shell",
    "defect_region",
    "choose_defect_center",
    "DEFECT_SHAPES",
]

DEFECT_SHAPES = ("cube", "sphere", "irregular")


def dense_to_sparse(img: torch.Tensor, threshold: float = 0.0, features: str = "ones") -> tuple[torch.Tensor, torch.Tensor]:
    """Active voxels of a dense channel-first image ``[C, *S]``.

    A voxel is active when any channel is ``> threshold``. ``features="ones"`` gives one feature 1.0 per voxel
    (the seed's input), ``"intensity"`` the ``C`` channel values. Coordinates are in C order (row-major) of the
    spatial axes, batch index 0.
    """
    if features not in ("ones", "intensity"):
        raise ValueError(f"features must be 'ones' or 'intensity', got {features!r}.")
    img = torch.as_tensor(img)
    if img.ndim < 2:
        raise ValueError(f"img must be channel-first [C, *S] with at least one spatial axis, got shape {tuple(img.shape)}.")
    active = (img > threshold).any(0)
    pos = torch.nonzero(active)  # row-major order
    coords = torch.cat([torch.zeros(len(pos), 1, dtype=pos.dtype, device=pos.device), pos], 1).to(torch.int32).contiguous()
    if features == "ones":
        feats = torch.ones(len(pos), 1, dtype=torch.float32, device=img.device)
    else:
        feats = img[(slice(None), *pos.T)].T.to(torch.float32)
    return coords, feats


def sparse_to_dense(coords: torch.Tensor, feats: torch.Tensor, spatial_shape: Sequence[int], batch_size: int = 1,
                    background: float = 0.0) -> torch.Tensor:
    """Dense ``[B, C, *S]`` tensor with ``feats`` at ``coords`` and ``background`` elsewhere (exact inverse of
    :func:`dense_to_sparse` for the active voxels)."""
    spatial_shape = [int(s) for s in spatial_shape]
    out = torch.full((batch_size, *spatial_shape, feats.shape[1]), float(background), dtype=feats.dtype,
                     device=feats.device)
    idx = coords.long()
    out[tuple(idx.T)] = feats
    return out.movedim(-1, 1).contiguous()


def _neighbour_offsets(ndim: int, connectivity: int) -> list[tuple[int, ...]]:
    """Offsets of the structuring element (like ``scipy.ndimage.generate_binary_structure(ndim, connectivity)``)."""
    if not 1 <= connectivity <= ndim:
        raise ValueError(f"connectivity must be in [1, {ndim}], got {connectivity}.")
    return [o for o in itertools.product((-1, 0, 1), repeat=ndim) if 0 < sum(map(abs, o)) <= connectivity]


def erode(mask: torch.Tensor, iterations: int = 1, connectivity: int = 1) -> torch.Tensor:
    """Binary erosion of a spatial mask ``[*S]``; voxels outside the array count as background
    (as ``scipy.ndimage.binary_erosion`` with its default ``border_value=0``)."""
    mask = torch.as_tensor(mask).bool()
    ndim = mask.ndim
    offsets = _neighbour_offsets(ndim, connectivity)
    for _ in range(iterations):
        padded = torch.nn.functional.pad(mask, [1] * (2 * ndim), value=False)
        out = mask.clone()
        for off in offsets:
            out &= padded[tuple(slice(1 + o, 1 + o + s) for o, s in zip(off, mask.shape))]
        mask = out
    return mask


def edge_shell(mask: torch.Tensor, thickness: int = 1, connectivity: int = 1) -> torch.Tensor:
    """``mask`` minus its ``thickness``-fold erosion (for a binary mask this is ``mask XOR erosion``).

    ``mask`` is ``[C, *S]``; each channel is treated separately. Returns a bool tensor of the same shape.
    """
    if thickness < 1:
        raise ValueError(f"thickness must be >= 1, got {thickness}.")
    mask = torch.as_tensor(mask).bool()
    return torch.stack([m & ~erode(m, thickness, connectivity) for m in mask])


def sparse_edge_shell(coords: torch.Tensor, spatial_shape: Sequence[int], thickness: int = 1,
                      connectivity: int = 1) -> torch.Tensor:
    """Bool ``[M]``: which active voxels lie on the edge shell, computed on the active set alone (no dense grid).

    A voxel survives one erosion step when all its neighbours (in the structuring element) are active and inside
    the volume; the shell is the voxels that do not survive ``thickness`` steps.
    """
    if thickness < 1:
        raise ValueError(f"thickness must be >= 1, got {thickness}.")
    coords = coords.long()
    ndim = coords.shape[1] - 1
    shape = torch.tensor([int(s) for s in spatial_shape], device=coords.device)
    offsets = torch.tensor(_neighbour_offsets(ndim, connectivity), device=coords.device)
    alive = torch.ones(len(coords), dtype=torch.bool, device=coords.device)
    for _ in range(thickness):
        keys = linear_index(coords[alive], spatial_shape)
        survive = alive.clone()
        for off in offsets:
            nb = coords.clone()
            nb[:, 1:] += off
            inside = ((nb[:, 1:] >= 0) & (nb[:, 1:] < shape)).all(1)
            survive &= inside & torch.isin(linear_index(nb, spatial_shape), keys)
        alive = survive
    return ~alive


def choose_defect_center(mask: np.ndarray, rng: np.random.RandomState, superior_axis: int = -1,
                         vault_fraction: float = 0.5, superior_is_high: bool = True) -> tuple[int, ...]:
    """A random voxel of ``mask`` ``[*S]`` in the upper ``vault_fraction`` of its extent along ``superior_axis``
    (the cranial vault), where AutoImplant cuts its synthetic defects."""
    pos = np.argwhere(mask)
    if len(pos) == 0:
        raise ValueError("choose_defect_center: the skull mask is empty.")
    along = pos[:, superior_axis]
    lo, hi = along.min(), along.max()
    cut = hi - vault_fraction * (hi - lo) if superior_is_high else lo + vault_fraction * (hi - lo)
    cand = pos[along >= cut] if superior_is_high else pos[along <= cut]
    return tuple(int(c) for c in cand[rng.randint(len(cand))])


def defect_region(spatial_shape: Sequence[int], center: Sequence[int], radius: float, shape: str = "cube",
                  rng: np.random.RandomState | None = None) -> np.ndarray:
    """Bool ``[*S]`` region to cut: a cube (half side ``radius``), a ball (``radius``), or an irregular union of
    3-5 balls of radius ``radius/2..radius`` around ``center`` (needs ``rng``)."""
    if shape not in DEFECT_SHAPES:
        raise ValueError(f"shape must be one of {DEFECT_SHAPES}, got {shape!r}.")
    if shape == "irregular" and rng is None:
        raise ValueError("defect_region: shape='irregular' needs rng.")
    full_shape = tuple(int(s) for s in spatial_shape)
    center = np.asarray(center, dtype=float)
    # every shape lies within 1.5 radius of the centre: evaluate it on that box only (a full CT grid per defect
    # would dominate the training step)
    reach = 1.5 * radius + 1 if shape == "irregular" else radius + 1
    lo = [max(0, int(np.floor(c - reach))) for c in center]
    hi = [min(n, int(np.ceil(c + reach)) + 1) for c, n in zip(center, full_shape)]
    grid = np.indices([b - a for a, b in zip(lo, hi)], sparse=True)
    grid = [g + a for g, a in zip(grid, lo)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    region = np.zeros(full_shape, dtype=bool)
    if shape == "cube":
        sub = np.ones([b - a for a, b in zip(lo, hi)], dtype=bool)
        for g, c in zip(grid, center):
            sub = sub & (np.abs(g - c) <= radius)
    elif shape == "sphere":
        sub = sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius**2
    else:
        sub = np.zeros([b - a for a, b in zip(lo, hi)], dtype=bool)
        for i in range(rng.randint(3, 6)):
            c = center if i == 0 else center + rng.uniform(-radius / 2, radius / 2, size=len(center))
            r = rng.uniform(radius / 2, radius)
            sub = sub | (sum((g - ci) ** 2 for g, ci in zip(grid, c)) <= r**2)
    region[box] = sub
    return region
