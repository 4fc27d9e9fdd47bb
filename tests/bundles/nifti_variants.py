"""Helpers of the bundle geometry tests: the same volume stored differently, and results mapped back.

A user's file may hold the same anatomy in another orientation (LPS instead of RAS), with its axes in another
order, or at another voxel size. Each helper returns ``(array, affine)`` of the same world content, and
:func:`to_reference` maps a result on such a grid back onto the reference grid, so two runs can be compared
voxel by voxel.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Spacing, SpatialResample


def reorient(array: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Same world content stored with axis codes ``axcodes`` (e.g. ``"LPS"``)."""
    start = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(axcodes))
    data = nib.orientations.apply_orientation(array, transform)
    return np.ascontiguousarray(data), affine @ nib.orientations.inv_ornt_aff(transform, array.shape)


def permute(array: np.ndarray, affine: np.ndarray, order: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Same world content with the storage axes in ``order`` (voxel (i, j, k) of the result = old axes ``order``)."""
    out = affine.copy()
    out[:, :3] = affine[:, list(order)]
    return np.ascontiguousarray(np.transpose(array, order)), out


def resample(array: np.ndarray, affine: np.ndarray, pixdim: Sequence[float], binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """Same world content on a grid of voxel size ``pixdim`` (linear; a binary mask is thresholded at 0.5)."""
    img = MetaTensor(torch.as_tensor(array[None], dtype=torch.float32), affine=torch.as_tensor(affine))
    out = Spacing(pixdim=pixdim, mode="bilinear")(img)
    data = out[0].numpy()
    data = (data > 0.5).astype(array.dtype) if binary else data.round().clip(0, 255).astype(array.dtype)
    return data, np.asarray(out.affine, dtype=np.float64)


def to_reference(array: np.ndarray, affine: np.ndarray, ref_shape: Sequence[int], ref_affine: np.ndarray) -> np.ndarray:
    """A label volume on grid ``affine`` resampled (nearest) onto the reference grid."""
    img = MetaTensor(torch.as_tensor(array[None], dtype=torch.float32), affine=torch.as_tensor(affine, dtype=torch.float64))
    out = SpatialResample(mode="nearest")(img, dst_affine=torch.as_tensor(ref_affine, dtype=torch.float64),
                                          spatial_size=tuple(ref_shape))
    return out[0].numpy() > 0.5


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
