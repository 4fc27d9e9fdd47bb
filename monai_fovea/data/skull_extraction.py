"""Skull extraction from a T1-weighted head MRI, giving the sparse skull-completion application a real skull of a
second subject and modality (the ``mri_ch2`` Colin27 head) beside the CT skull it trains on.

In T1 images cortical bone has almost no signal, like CSF and air, while the scalp (fat) and the brain are bright.
The skull is therefore taken as the dark band between the brain (plus CSF) and the scalp; see
:func:`extract_skull_t1` for the steps and the reasons behind each. The vault comes out as a closed band; the skull
base and the face, where air in the sinuses, the ear canals and dark muscles touch the bone, are rough.

Example::

    from monai_fovea.data.skull_extraction import load_mri_skull

    skull, affine = load_mri_skull()        # bool [181, 217, 181], RAS+ affine, 1 mm
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["extract_skull_t1", "load_mri_skull", "save_extraction_figure"]

_FULL = np.ones((3, 3, 3), bool)  # 26-connectivity
_FALLBACK_ERODE_MM = 7.0  # fallback brain: erosion that cuts the bridges to the scalp (4 mm leaves the face attached)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask, _FULL)
    if n <= 1:
        return labels > 0
    return labels == np.bincount(labels.ravel())[1:].argmax() + 1


def _dilate(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    # Euclidean (ball-shaped, anisotropy-aware) dilation via a distance transform: a ball structuring element of a
    # few mm costs seconds with binary_dilation on a head volume, the EDT costs one pass.
    if radius_mm <= 0:
        return mask.copy()
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= radius_mm


def _erode(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    if radius_mm <= 0:
        return mask.copy()
    return ndimage.distance_transform_edt(mask, sampling=spacing) > radius_mm


def _close(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    # pad so that the closing does not stick to the volume border
    pad = int(np.ceil(radius_mm / min(spacing))) + 1
    m = np.pad(mask, pad)
    m = _erode(_dilate(m, radius_mm, spacing), radius_mm, spacing)
    return m[tuple(slice(pad, -pad) for _ in range(mask.ndim))]


def _fill_holes(mask: np.ndarray, axis: int | None = 2) -> np.ndarray:
    """3D hole filling, then slice by slice along ``axis``: a head cut by the field of view (neck, face) is open at
    the border, so its interior is not a 3D hole, but it is one in each axial slice."""
    out = ndimage.binary_fill_holes(mask)
    if axis is not None:
        for i in range(out.shape[axis]):
            idx = [slice(None)] * 3
            idx[axis] = i
            out[tuple(idx)] = ndimage.binary_fill_holes(out[tuple(idx)])
    return out


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values))


def extract_skull_t1(
    t1: np.ndarray,
    brain: np.ndarray | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    head_threshold: float | None = None,
    dark_fraction: float = 0.5,
    brain_closing_mm: float = 6.0,
    brain_margin_mm: float = 1.0,
    band_mm: float = 12.0,
    skin_margin_mm: float = 2.0,
    bone_closing_mm: float = 2.0,
    min_hole_voxels: int = 500,
) -> np.ndarray:
    """The skull in a T1-weighted head image, as a bool ``[X, Y, Z]`` mask (one 26-connected component).

    Steps (distances in mm, converted with ``spacing``):

    1. **Head**: ``t1 > head_threshold`` (default: Otsu over the whole volume, which separates air from tissue), the
       largest 26-component, holes filled in 3D and in every axial slice (the dark skull and CSF are holes of it).
    2. **Brain**: ``brain`` if given (e.g. atlas labels ``> 0``), else the bright voxels (``>= dark threshold``) of
       the head eroded by 7 mm (which cuts the bridges to the scalp), the component at the head's centre, dilated
       back. It is then closed by ``brain_closing_mm`` (an atlas labels grey matter, and sulci between its gyri hold
       dark CSF that is no bone) and filled, and dilated by ``brain_margin_mm`` to swallow the CSF around the brain —
       kept small by default because in the real image the brain almost touches the inner table.
    3. **Dark**: ``t1 < dark_fraction * median(t1[brain])``: cortical bone, CSF and air have little T1 signal, fat
       (scalp, marrow) and brain much more; relative to the brain so that it does not depend on the scanner scale.
    4. **Skull** = head, not brain, dark, within ``band_mm`` of the brain (the skull lies just outside the brain;
       farther down lie the dark neck muscles and airways), and more than ``skin_margin_mm`` inside the head surface
       (the partial-volume edge between scalp and air is dark too).
    5. **Clean-up**: closing by ``bone_closing_mm`` (bridges bright marrow between the two dark tables and gaps of a
       voxel), the largest 26-component (drops islands of dark muscle or sinus air), holes of fewer than
       ``min_hole_voxels`` voxels filled (a hole is a 6-connected background region not reaching the outside).

    Args:
        t1: T1-weighted image ``[X, Y, Z]`` (any real dtype, air darkest).
        brain: optional bool/label mask ``[X, Y, Z]`` of the brain (non-zero = brain), same shape as ``t1``.
        spacing: voxel size in mm, one per axis.
        head_threshold: intensity above which a voxel is tissue (default: Otsu).
        dark_fraction: the dark (bone/CSF) threshold as a fraction of the brain's median intensity.
        brain_closing_mm, brain_margin_mm: closing radius and dilation of the brain mask (step 2).
        band_mm: maximum distance of a skull voxel from the (closed, dilated) brain.
        skin_margin_mm: voxels nearer than this to the outside of the head are not skull.
        bone_closing_mm: closing radius of the clean-up (0 disables it).
        min_hole_voxels: enclosed holes smaller than this are filled (0 disables it).

    Returns:
        bool ``[X, Y, Z]`` skull mask.

    Raises:
        ValueError: ``t1`` is not 3D, ``brain`` has another shape, ``spacing`` is not 3 positive numbers, the head
            mask or the brain mask is empty, or no skull voxel is left.

    Example::

        import nibabel as nib
        t1 = nib.load("ch2.nii.gz").get_fdata()
        aal = nib.load("aal.nii.gz").get_fdata()
        skull = extract_skull_t1(t1, brain=aal > 0)
    """
    t1 = np.asarray(t1)
    if t1.ndim != 3:
        raise ValueError(f"t1 must be a 3D array [X, Y, Z], got ndim={t1.ndim} (shape {t1.shape})")
    if not np.issubdtype(t1.dtype, np.number) or np.issubdtype(t1.dtype, np.complexfloating):
        raise ValueError(f"t1 must hold real numbers, got dtype {t1.dtype}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive voxel sizes in mm, got {spacing}")
    if brain is not None:
        brain = np.asarray(brain)
        if brain.shape != t1.shape:
            raise ValueError(f"brain must have the shape of t1 {t1.shape}, got {brain.shape}")
        brain = brain != 0
        if not brain.any():
            raise ValueError("brain mask is empty")
    if not 0 < dark_fraction < 1:
        raise ValueError(f"dark_fraction must be in (0, 1), got {dark_fraction}")
    t1 = t1.astype(np.float32, copy=False)

    # 1. head
    thr = _otsu(t1) if head_threshold is None else float(head_threshold)
    head = t1 > thr
    if not head.any():
        raise ValueError(f"empty head mask: no voxel of t1 is above head_threshold={thr:g}")
    head = _fill_holes(_largest_component(head))

    # 2. brain and 3. dark threshold
    if brain is None:
        dark_thr = dark_fraction * float(np.median(t1[head]))
        core = _erode(head & (t1 >= dark_thr), _FALLBACK_ERODE_MM, spacing)
        if not core.any():
            raise ValueError("brain not found from t1 (nothing bright is left after a 7 mm erosion); pass brain")
        # the component at the head's centre of mass (else the largest) is the brain: the scalp, a thin shell, is
        # eroded away
        labels, _ = ndimage.label(core, _FULL)
        centre = tuple(np.round(ndimage.center_of_mass(head)).astype(int))
        lab = labels[centre] if labels[centre] > 0 else np.bincount(labels.ravel())[1:].argmax() + 1
        brain = _dilate(labels == lab, _FALLBACK_ERODE_MM, spacing) & head
    else:
        dark_thr = dark_fraction * float(np.median(t1[brain]))
    brain = _fill_holes(_close(brain, brain_closing_mm, spacing))
    brain = _dilate(brain, brain_margin_mm, spacing)

    # 4. the dark band around the brain, inside the head
    near_brain = ndimage.distance_transform_edt(~brain, sampling=spacing) <= band_mm
    inside = _erode(head, skin_margin_mm, spacing)
    skull = inside & ~brain & near_brain & (t1 < dark_thr)
    if not skull.any():
        raise ValueError(
            f"no skull voxel: nothing darker than {dark_thr:g} (dark_fraction={dark_fraction}) lies between the "
            f"brain and the scalp within band_mm={band_mm}"
        )

    # 5. clean-up
    if bone_closing_mm > 0:
        # marrow is bright but bone: close across it, then forbid what the closing pushed into the brain or the air
        skull = _close(skull, bone_closing_mm, spacing) & inside & ~brain
    skull = _largest_component(skull)
    if min_hole_voxels > 0:
        bg, _ = ndimage.label(~skull)
        sizes = np.bincount(bg.ravel())
        border = np.unique(np.concatenate([bg[0].ravel(), bg[-1].ravel(), bg[:, 0].ravel(), bg[:, -1].ravel(),
                                           bg[:, :, 0].ravel(), bg[:, :, -1].ravel()]))
        small = sizes < min_hole_voxels
        small[0] = False
        small[border] = False
        skull |= small[bg]
    return skull


def load_mri_skull() -> tuple[np.ndarray, np.ndarray]:
    """``(bool skull [X, Y, Z], affine)`` from the ``mri_ch2`` sample, in RAS+ orientation (third axis superior).

    Uses ``image`` (ch2, 1 mm, with scalp; ``image_hires``/ch2better is skull-stripped) with the AAL atlas
    (``aal > 0``, drawn on this very head) as the brain. Same convention as
    :func:`monai_fovea.apps.sparse_completion.load_ct_skull`.

    Example::

        skull, affine = load_mri_skull()
        skull.shape, nib.aff2axcodes(affine)    # (181, 217, 181), ('R', 'A', 'S')
    """
    import nibabel as nib

    from monai_fovea.data import samples

    files = samples.fetch("mri_ch2")
    # as_closest_canonical: RAS+ voxel axes whatever the file's orientation (the mricron files already are)
    img = nib.as_closest_canonical(nib.load(str(files["image"])))
    aal = nib.as_closest_canonical(nib.load(str(files["aal"])))
    if aal.shape != img.shape or not np.allclose(aal.affine, img.affine, atol=1e-3):
        raise ValueError(f"mri_ch2 'aal' {aal.shape} is not on the grid of 'image' {img.shape}")
    t1 = np.asarray(img.dataobj, dtype=np.float32)
    skull = extract_skull_t1(t1, brain=np.asarray(aal.dataobj) > 0, spacing=img.header.get_zooms()[:3])
    return skull, np.asarray(img.affine, dtype=np.float64)


def save_extraction_figure(path: str | os.PathLike) -> None:
    """Three orthogonal mid-slices (through the brain's centroid) of the ``mri_ch2`` T1 with the extracted skull
    overlaid in red, written as a PNG to ``path`` (used for ``docs/images/mri_skull_extraction.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    from monai_fovea.data import samples

    skull, _ = load_mri_skull()
    t1 = np.asarray(nib.as_closest_canonical(nib.load(str(samples.fetch("mri_ch2")["image"]))).dataobj, np.float32)
    c = np.round(ndimage.center_of_mass(skull)).astype(int)
    views = [("sagittal (x)", t1[c[0]], skull[c[0]]), ("coronal (y)", t1[:, c[1]], skull[:, c[1]]),
             ("axial (z)", t1[:, :, c[2]], skull[:, :, c[2]])]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, (title, img, mask) in zip(axes, views):
        ax.imshow(img.T, origin="lower", cmap="gray")
        ax.imshow(np.ma.masked_where(~mask.T, mask.T), origin="lower", cmap="autumn", alpha=0.45, interpolation="none")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"mri_ch2 T1 + extracted skull ({int(skull.sum())} voxels)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":  # python -m monai_fovea.data.skull_extraction [out.png]
    import sys

    save_extraction_figure(sys.argv[1] if len(sys.argv) > 1 else "docs/images/mri_skull_extraction.png")
