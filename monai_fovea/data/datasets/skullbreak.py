"""SkullBreak / SkullFix (AutoImplant challenge) layout: ``complete_skull/``, ``defective_skull/``, ``implant/``.

SkullFix keeps one file per case in each folder (``defective_skull/000.nrrd``, ``implant/000.nrrd``,
``complete_skull/000.nrrd``); SkullBreak adds one sub-folder per defect type in ``defective_skull/`` and
``implant/`` (``bilateral/``, ``frontoorbital/``, ``parietotemporal/``, ``random_1/``, ``random_2/``) while
``complete_skull/`` stays flat. Files are NRRD (the challenge's format) or NIfTI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["skullbreak_datalist", "load_skull_mask"]

_SUFFIXES = (".nrrd", ".nii.gz", ".nii")


def _case_name(path: Path) -> str:
    for suffix in _SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _mask_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(_SUFFIXES))


def skullbreak_datalist(root: str | Path) -> list[dict[str, str]]:
    """``[{"defective", "implant", "complete", "id", "defect_type"}]`` for every defective skull under ``root``.

    Args:
        root: the data set folder holding ``defective_skull/``, ``implant/`` and (optionally, e.g. for test sets)
            ``complete_skull/``.

    Returns:
        the datalist sorted by ``(defect_type, id)``; ``defect_type`` is ``""`` for the flat SkullFix layout and
        ``complete`` is absent when the case has no complete skull. A defective skull without its implant is an
        error naming the file.

    Example:
        >>> skullbreak_datalist("/data/SkullBreak/training")[0]["defect_type"]  # doctest: +SKIP
        'bilateral'
    """
    root = Path(root).expanduser()
    defective_dir, implant_dir, complete_dir = root / "defective_skull", root / "implant", root / "complete_skull"
    if not defective_dir.is_dir():
        raise FileNotFoundError(f"root: {root} has no defective_skull/ folder (SkullBreak/SkullFix layout).")
    complete = {_case_name(p): p for p in _mask_files(complete_dir)} if complete_dir.is_dir() else {}
    items = []
    for defective in _mask_files(defective_dir):
        rel = defective.relative_to(defective_dir)
        candidates = [implant_dir / rel.parent / (_case_name(defective) + s) for s in _SUFFIXES]
        implant = next((c for c in candidates if c.is_file()), None)
        if implant is None:
            raise FileNotFoundError(f"root: defective skull {defective} has no implant at {implant_dir / rel}.")
        case = _case_name(defective)
        item = {"defective": str(defective), "implant": str(implant), "id": case,
                "defect_type": rel.parent.as_posix() if rel.parent != Path(".") else ""}
        if case in complete:
            item["complete"] = str(complete[case])
        items.append(item)
    if not items:
        raise FileNotFoundError(f"root: no NRRD/NIfTI files under {defective_dir}.")
    return sorted(items, key=lambda d: (d["defect_type"], d["id"]))


def load_skull_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 mask [1, X, Y, Z], RAS affine 4x4)`` of an NRRD (SimpleITK) or NIfTI (nibabel) skull mask."""
    path = Path(path)
    if path.name.endswith(".nrrd"):
        from monai_fovea.data.datasets.avt import load_nrrd

        array, affine = load_nrrd(path)
    elif path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        array, affine = np.asarray(img.dataobj)[None], img.affine
    else:
        raise ValueError(f"path: {path} is neither NRRD nor NIfTI.")
    return (array > 0).astype(np.uint8), np.asarray(affine, dtype=np.float64)
