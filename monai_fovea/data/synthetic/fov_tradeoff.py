"""Seeded 2D/3D images where no single field of view (FoV) / resolution trade-off is best everywhere.

What makes it hard (and why it tests foveation):

* **Fine classes** 1 (``checker``: a ±``amplitude`` checkerboard of period 2 px) and 2 (``stripes``: ±``amplitude``
  stripes of period 2 px along the last axis) fill small squares/cubes (side ``fine_size``, aligned to even
  coordinates) on a background of weak noise. Every aligned 2×2(×2) block of either texture averages to exactly 0,
  the background's mean: after any downsampling by 2 or more, classes 1 and 2 look like background. They can only
  be told apart at full resolution (a sampling step of 1).
* **Context classes** 3 (``bright ring``) and 4 (``dark ring``) are discs/balls of radius ``blob_radius`` filled with
  one and the same smooth texture (a single template per image, so their insides are pixel-identical). What
  separates them is a ring/shell of width ``ring_width`` at distance ``ring_gap`` outside the blob, bright (+1) for
  class 3 and dark (−1) for class 4 (ring pixels are background). Everything inside the ring (blob and gap) is
  pixel-identical for the two classes, so a window centred in a blob sees a difference only once it reaches the
  ring; it sees the ring on every side once its FoV exceeds ``2 * (blob_radius + ring_gap)`` (``context_fov``):
  a wide FoV is needed; resolution is not.
* Objects do not overlap and keep a margin between each other; everything else is background (class 0).

So a small FoV at full resolution confuses classes 3 and 4 in blob centres, and a wide, downsampled FoV loses
classes 1 and 2; a per-location choice (foveation) can get both. Blobs are visible in a low-resolution view (their
mean is ``blob_offset``) while the fine squares are not, which is what a foveation head has to work with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["fov_tradeoff", "FOV_TRADEOFF_CLASSES"]

FOV_TRADEOFF_CLASSES = ("background", "checker", "stripes", "bright_ring_blob", "dark_ring_blob")


def _place(rng, shape, radius, placed, margin, tries=2000):
    """A random centre at least ``radius`` inside the image and ``radius + r + margin`` from every placed object."""
    for _ in range(tries):
        c = np.array([rng.integers(radius, s - radius) for s in shape])
        if all(np.linalg.norm(c - pc) >= radius + pr + margin for pc, pr in placed):
            return c
    return None


def fov_tradeoff(
    shape: Sequence[int] = (256, 256),
    seed: int = 0,
    num_fine: int = 6,
    num_context: int = 2,
    fine_size: int = 12,
    blob_radius: int = 20,
    ring_gap: int = 12,
    ring_width: int = 6,
    amplitude: float = 0.5,
    blob_offset: float = 0.6,
    noise: float = 0.05,
) -> dict:
    """Generate one FoV-trade-off image (see the module docstring for the classes and why they are hard).

    Args:
        shape: spatial shape (2D or 3D).
        seed: seed of ``numpy.random.default_rng``; equal seeds give identical images.
        num_fine: fine squares/cubes (alternating checker / stripes, at least one of each when >= 2).
        num_context: context blobs (alternating bright / dark ring, at least one of each when >= 2).
        fine_size: side of a fine square (rounded up to even).
        blob_radius, ring_gap, ring_width: blob geometry in pixels.
        amplitude: fine-texture contrast; blob_offset: blob mean intensity; noise: background noise std.

    Returns:
        ``{"image": float32 [1, *shape], "label": uint8 [1, *shape], "blob_centers": int [K, ndim],
        "blob_classes": [K], "fine_boxes": int [M, 2 * ndim] (start..., end...), "fine_classes": [M],
        "context_fov": int}`` — ``context_fov`` is the FoV from which a blob centre sees its ring on every side.

    Example:
        >>> d = fov_tradeoff((128, 128), seed=1, num_fine=2, num_context=2, blob_radius=12, ring_gap=6)
        >>> d["image"].shape, sorted(set(d["label"].ravel().tolist()))
        ((1, 128, 128), [0, 1, 2, 3, 4])
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim not in (2, 3):
        raise ValueError(f"shape must be 2D or 3D, got {shape}.")
    fine_size = fine_size + (fine_size % 2)
    outer = blob_radius + ring_gap + ring_width
    if 2 * outer >= min(shape):
        raise ValueError(
            f"shape {shape} is too small for blobs of outer radius {outer} (blob_radius + ring_gap + ring_width)."
        )
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, noise, shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")

    # one template for every blob, covering the blob and the gap up to the ring: a smooth texture inside the blob,
    # background noise in the gap -- so everything a blob centre sees inside its ring is pixel-identical for 3 and 4
    inner = blob_radius + ring_gap
    offsets = np.stack(np.meshgrid(*[np.arange(-inner, inner + 1)] * ndim, indexing="ij"))
    odist = np.sqrt((offsets**2).sum(0))
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, odist.shape), sigma=2.0)
    template = np.where(
        odist <= blob_radius,
        blob_offset + 0.3 * texture / (texture.std() + 1e-8),
        rng.normal(0.0, noise, odist.shape),
    ).astype(np.float32)
    in_disc = odist <= blob_radius
    in_gap = odist < inner

    placed: list[tuple[np.ndarray, float]] = []
    blob_centers, blob_classes = [], []
    for k in range(num_context):
        c = _place(rng, shape, outer, placed, margin=4)
        if c is None:
            break
        placed.append((c, outer))
        cls = 3 if k % 2 == 0 else 4
        dist = np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grids, c)))
        ring = (dist >= blob_radius + ring_gap) & (dist < outer)
        image[ring] = 1.0 if cls == 3 else -1.0
        sl = tuple(slice(ci - inner, ci + inner + 1) for ci in c)
        image[sl][in_gap] = template[in_gap]
        label[sl][in_disc] = cls
        blob_centers.append(c)
        blob_classes.append(cls)

    # fine textures, defined on absolute coordinates so every aligned 2-block is zero-sum
    parity = sum(grids) % 2
    checker = np.where(parity == 0, amplitude, -amplitude).astype(np.float32)
    stripes = np.where(grids[-1] % 2 == 0, amplitude, -amplitude).astype(np.float32)
    fine_boxes, fine_classes = [], []
    half = fine_size / 2 * np.sqrt(ndim)
    for k in range(num_fine):
        c = _place(rng, tuple(s - 2 for s in shape), int(np.ceil(half)) + 1, placed, margin=6)
        if c is None:
            break
        placed.append((c, half))
        start = np.array([(ci - fine_size // 2) // 2 * 2 for ci in c])
        start = np.clip(start, 0, np.array(shape) - fine_size)
        start -= start % 2
        sl = tuple(slice(s0, s0 + fine_size) for s0 in start)
        cls = 1 if k % 2 == 0 else 2
        image[sl] = (checker if cls == 1 else stripes)[sl]
        label[sl] = cls
        fine_boxes.append(np.concatenate([start, start + fine_size]))
        fine_classes.append(cls)

    return {
        "image": image[None],
        "label": label[None],
        "blob_centers": np.array(blob_centers, dtype=np.int64).reshape(-1, ndim),
        "blob_classes": blob_classes,
        "fine_boxes": np.array(fine_boxes, dtype=np.int64).reshape(-1, 2 * ndim),
        "fine_classes": fine_classes,
        "context_fov": 2 * (blob_radius + ring_gap),
    }
