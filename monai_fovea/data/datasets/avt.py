"""Aortic Vessel Tree (AVT) CTA data set: NRRD volumes ``<case>.nrrd`` with ``<case>.seg.nrrd`` beside them, in one
folder per centre (``Dongyang/``, ``KiTS/``, ``Rider/``) and per case."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["avt_datalist", "load_nrrd"]


def avt_datalist(root: str | Path) -> list[dict[str, str]]:
    """``[{"image", "label", "id"}]`` for every ``*.seg.nrrd`` under ``root`` with its ``*.nrrd`` volume.

    Args:
        root: the AVT folder (searched recursively).

    Returns:
        the datalist sorted by case id; a clear error if a segmentation has no volume.

    Example:
        >>> avt_datalist("/data/AVT")[0]["id"]  # doctest: +SKIP
        'D1'
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"root: AVT folder {root} does not exist.")
    items = []
    for seg in sorted(root.rglob("*.seg.nrrd")):
        case = seg.name[: -len(".seg.nrrd")]
        image = seg.with_name(f"{case}.nrrd")
        if not image.is_file():
            raise FileNotFoundError(f"root: segmentation {seg} has no volume {image.name} beside it.")
        items.append({"image": str(image), "label": str(seg), "id": case})
    if not items:
        raise FileNotFoundError(f"root: no *.seg.nrrd under {root}.")
    return sorted(items, key=lambda d: d["id"])


def load_nrrd(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(array [1, X, Y, Z], affine 4x4 RAS)`` of an NRRD file read with SimpleITK (no extra NRRD package).

    The array is transposed to ``x, y, z`` order and the affine converted from ITK's LPS to RAS, as MONAI's
    ``ITKReader`` does, so the result can be written with ``write_nifti`` directly.
    """
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(img).transpose()  # ITK gives z, y, x
    ndim = img.GetDimension()
    direction = np.asarray(img.GetDirection()).reshape(ndim, ndim)
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = direction * np.asarray(img.GetSpacing())[None]
    affine[:ndim, ndim] = img.GetOrigin()
    lps_to_ras = np.diag([-1.0, -1.0] + [1.0] * (ndim - 1))
    affine = lps_to_ras @ affine
    return array[None], affine
