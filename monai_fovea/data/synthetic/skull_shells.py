"""Seeded closed skull-like shells: thin, curved, with a thickness that varies smoothly over the surface.

What makes them hard: the shell is only a few voxels thick (occupancy ~5-10% of its box, like a real skull), it
bends everywhere, and its thickness and radius vary smoothly -- so completing a hole means continuing both the
curvature and the local thickness across it, not filling a plane.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["skull_shell"]


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], coarse: int = 4) -> np.ndarray:
    """A smooth random field in [-1, 1]: cubic upsampling of a coarse uniform grid."""
    grid = rng.uniform(-1, 1, size=(coarse,) * len(shape))
    field = ndimage.zoom(grid, [s / coarse for s in shape], order=3, mode="nearest")
    return np.clip(field[tuple(slice(0, s) for s in shape)], -1, 1)


def skull_shell(shape: Sequence[int] = (96, 96, 72), seed: int = 0, thickness: Sequence[float] = (2.0, 5.0),
                bumpiness: float = 0.06, fill: float = 0.85) -> np.ndarray:
    """One closed ellipsoidal shell ``uint8 [*shape]`` (1 = bone).

    Args:
        shape: spatial shape (2D or 3D).
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same shell.
        thickness: (min, max) shell thickness in voxels; varies smoothly over the surface.
        bumpiness: relative amplitude of the smooth radial deformation.
        fill: outer semi-axes as a fraction of half the shape (randomly scaled by 0.9-1.0 per axis).

    Returns:
        the shell mask.

    Example:
        >>> m = skull_shell((48, 48, 40), seed=1)
        >>> m.shape, m.dtype, 0.02 < m.mean() < 0.3
        ((48, 48, 40), dtype('uint8'), True)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise ValueError(f"shape must be 2D or 3D with every size >= 8, got {shape}.")
    if not 0 < thickness[0] <= thickness[1]:
        raise ValueError(f"thickness must be (min, max) with 0 < min <= max, got {thickness}.")
    rng = np.random.default_rng(seed)
    semi = np.array([fill * (s - 1) / 2 * rng.uniform(0.9, 1.0) for s in shape])
    centre = (np.array(shape) - 1) / 2
    grid = np.indices(shape, dtype=np.float32)
    d = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, semi)))  # 1 on the outer ellipsoid
    d = d / (1 + bumpiness * _smooth_field(rng, shape))
    t = thickness[0] + (thickness[1] - thickness[0]) * (_smooth_field(rng, shape) + 1) / 2
    inner = 1 - t / semi.mean()
    return ((d <= 1) & (d > inner)).astype(np.uint8)
