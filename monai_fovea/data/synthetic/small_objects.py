"""Many small objects in a large image or volume (segment-then-segment benchmarks and tests).

What makes it hard: the objects are a few pixels across in an image hundreds of pixels wide, so a uniform
downscale to a network's input size (32-128) shrinks them below a pixel — a net on the downscaled image misses
them or gets their outline wrong, while crops at full resolution keep every detail. Objects are ellipses
(ellipsoids in 3D) with random radii, orientation-free axis-aligned shapes, random intensity, on a smooth
background with Gaussian noise; they never overlap, so the instance mask is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["small_objects"]


def small_objects(
    spatial_size: Sequence[int] = (256, 256),
    num_objects: int = 20,
    radius: tuple[float, float] = (3.0, 8.0),
    contrast: tuple[float, float] = (0.5, 1.0),
    noise: float = 0.1,
    seed: int = 0,
    max_tries: int = 10000,
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded image (2D) or volume (3D) with ``num_objects`` small non-overlapping ellipses / ellipsoids.

    Args:
        spatial_size: ``(H, W)`` or ``(D, H, W)``.
        num_objects: objects to place (fewer if they do not fit in ``max_tries`` attempts).
        radius: range of the semi-axes, pixels (each axis drawn independently).
        contrast: range of an object's intensity above the background.
        noise: standard deviation of the additive Gaussian noise.
        seed: ``numpy.random.default_rng`` seed.
        max_tries: placement attempts before giving up.

    Returns:
        ``(image float32 [1, *spatial_size], instances int32 [1, *spatial_size])``; instance ids 1..K, 0 background.

    Example:
        >>> img, inst = small_objects((64, 64), num_objects=5, seed=0)
        >>> img.shape, int(inst.max())
        ((1, 64, 64), 5)
    """
    size = tuple(int(s) for s in spatial_size)
    if len(size) not in (2, 3):
        raise ValueError(f"spatial_size must have 2 or 3 entries, got {spatial_size}.")
    if radius[0] <= 0 or radius[1] < radius[0]:
        raise ValueError(f"radius must be a (min, max) range of positive values, got {radius}.")
    rng = np.random.default_rng(seed)
    instances = np.zeros(size, np.int32)
    image = np.zeros(size, np.float32)
    placed, tries = 0, 0
    while placed < num_objects and tries < max_tries:
        tries += 1
        radii = rng.uniform(radius[0], radius[1], size=len(size))
        center = np.array([rng.uniform(r, s - r) for r, s in zip(radii, size)])
        lo = np.maximum(np.floor(center - radii - 1).astype(int), 0)
        hi = np.minimum(np.ceil(center + radii + 2).astype(int), size)
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        local = np.ogrid[region]  # index grids of the region only
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(local, center, radii)) <= 1.0
        # keep one pixel of background between objects so that instances never touch
        halo = ndimage.binary_dilation(inside, structure=np.ones((3,) * len(size), bool))
        if not inside.any() or instances[region][halo].any():
            continue
        placed += 1
        instances[region][inside] = placed
        image[region][inside] = rng.uniform(*contrast)
    # smooth background variation (low-frequency) plus pixel noise
    background = ndimage.gaussian_filter(rng.normal(0, 1, size).astype(np.float32), sigma=max(size) / 16)
    background = 0.15 * background / (np.abs(background).max() + 1e-8)
    image = ndimage.gaussian_filter(image, 0.7) + background + rng.normal(0, noise, size).astype(np.float32)
    return image[None].astype(np.float32), instances[None]
