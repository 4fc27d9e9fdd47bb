"""Fusion of several annotators' label maps with SimpleITK's multi-label STAPLE (Warfield et al.), as the
foveation paper does for Gleason2019's six pathologists."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["staple_fuse", "majority_vote"]


def majority_vote(label_maps: Sequence[np.ndarray]) -> np.ndarray:
    """Per-pixel most frequent label (ties go to the smallest label) of same-shaped integer maps."""
    stack = np.stack([np.asarray(m) for m in label_maps])
    labels = np.unique(stack)
    counts = np.stack([(stack == lab).sum(0) for lab in labels])
    return labels[counts.argmax(0)].astype(stack.dtype)


def staple_fuse(label_maps: Sequence[np.ndarray], max_iterations: int | None = None) -> np.ndarray:
    """Fuse annotators' label maps with ``SimpleITK.MultiLabelSTAPLEImageFilter``.

    Pixels STAPLE leaves undecided (equal posteriors) take the per-pixel majority vote, so the result holds only
    labels the annotators used. One map is returned unchanged.

    Args:
        label_maps: same-shaped 2D/3D non-negative integer maps (values below 255), one per annotator.
        max_iterations: STAPLE's EM iteration limit (SimpleITK's default when ``None``).

    Returns:
        the fused map, ``uint8``.

    Example:
        >>> a = np.array([[0, 1, 1]]); b = np.array([[0, 1, 4]]); c = np.array([[1, 1, 4]])
        >>> staple_fuse([a, b, c]).tolist()
        [[0, 1, 4]]
    """
    import SimpleITK as sitk

    maps = [np.asarray(m) for m in label_maps]
    if not maps:
        raise ValueError("label_maps is empty: STAPLE needs at least one annotation.")
    shape = maps[0].shape
    for i, m in enumerate(maps):
        if m.shape != shape:
            raise ValueError(f"label_maps[{i}] has shape {m.shape}, label_maps[0] has {shape}.")
        if m.size and (m.min() < 0 or m.max() >= 255):
            raise ValueError(f"label_maps[{i}] holds values outside [0, 255): STAPLE needs small non-negative labels.")
    maps = [m.astype(np.uint8) for m in maps]
    if len(maps) == 1:
        return maps[0].copy()
    undecided = 255
    f = sitk.MultiLabelSTAPLEImageFilter()
    f.SetLabelForUndecidedPixels(undecided)
    if max_iterations is not None:
        f.SetMaximumNumberOfIterations(int(max_iterations))
    fused = sitk.GetArrayFromImage(f.Execute([sitk.GetImageFromArray(m) for m in maps])).astype(np.uint8)
    hole = fused == undecided
    if hole.any():
        fused[hole] = majority_vote(maps)[hole]
    return fused
