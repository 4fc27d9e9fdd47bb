"""Gleason2019 challenge (prostate TMA cores, six pathologists) → fused, remapped, centre-cropped datalist.

Layout of the challenge's training download::

    <root>/Train Imgs/slide001_core003.jpg                        (5120 x 5120 RGB)
    <root>/Maps1_T/slide001_core003_classimg_nonconvex.png         (annotator 1; each core has a subset)
    ...
    <root>/Maps6_T/slide001_core003_classimg_nonconvex.png

As in the foveation paper: the available annotations of a core are fused with multi-label STAPLE, raw labels are
mapped ``{0, 1, 2, 6} → 0`` (benign), ``3 → 1`` (Gleason 3), ``4 → 2`` (Gleason 4), ``5 → 3`` (Gleason 5),
and image and label are centre-cropped (4400 × 4400 in the paper). The results are written once into ``cache_dir``
as PNGs and reused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from monai_fovea.data.staple import staple_fuse

__all__ = ["GLEASON_LABEL_MAP", "GLEASON_CLASSES", "gleason2019_datalist", "remap_labels", "center_crop"]

GLEASON_LABEL_MAP: dict[int, int] = {0: 0, 1: 0, 2: 0, 6: 0, 3: 1, 4: 2, 5: 3}
GLEASON_CLASSES = ("benign", "gleason3", "gleason4", "gleason5")
_IMAGE_DIRS = ("Train Imgs", "Train_Imgs", "train_imgs", "Images", "images")
_SUFFIX = "_classimg_nonconvex"


def remap_labels(label: np.ndarray, mapping: Mapping[int, int] = GLEASON_LABEL_MAP) -> np.ndarray:
    """Map raw label values through ``mapping``; a value missing from it is an error naming the value."""
    label = np.asarray(label)
    values = np.unique(label)
    missing = [int(v) for v in values if int(v) not in mapping]
    if missing:
        raise ValueError(f"label values {missing} are not in the label mapping {dict(mapping)}.")
    lut = np.zeros(int(values.max()) + 1, dtype=np.uint8)
    for k, v in mapping.items():
        if k < len(lut):
            lut[k] = v
    return lut[label]


def center_crop(array: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Central ``size`` crop of the first two axes of ``array`` (``[H, W]`` or ``[H, W, C]``); the image must be
    at least that large."""
    h, w = array.shape[:2]
    ch, cw = (size, size) if isinstance(size, int) else tuple(size)
    if ch > h or cw > w:
        raise ValueError(f"crop size {(ch, cw)} is larger than the image {(h, w)}.")
    y, x = (h - ch) // 2, (w - cw) // 2
    return array[y : y + ch, x : x + cw]


def _image_dir(root: Path) -> Path:
    for name in _IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"no image folder ({' / '.join(_IMAGE_DIRS)}) under root={root}.")


def gleason2019_datalist(
    root: str | Path,
    cache_dir: str | Path | None = None,
    crop_size: int | Sequence[int] | None = 4400,
    label_map: Mapping[int, int] = GLEASON_LABEL_MAP,
    annotators: Sequence[int] = (1, 2, 3, 4, 5, 6),
) -> list[dict]:
    """``[{"image": cropped PNG, "label": fused label PNG, "id": core id, "annotators": [k, ...]}]``, sorted by id.

    Args:
        root: the folder holding ``Train Imgs`` and ``Maps{k}_T``.
        cache_dir: where cropped images and fused labels go (default ``<root>/fused_staple``).
        crop_size: central crop (the paper: 4400); ``None`` keeps the full core.
        label_map: raw → training label mapping (default the paper's).
        annotators: which ``Maps{k}_T`` folders to fuse.

    Returns:
        the datalist; cores without any annotation are skipped.

    Example:
        >>> gleason2019_datalist("/data/gleason2019")[0]["label"]  # doctest: +SKIP
    """
    from PIL import Image

    from monai_fovea.data.io import write_png

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root={root} is not a folder.")
    images = sorted(p for p in _image_dir(root).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif"))
    cache = Path(cache_dir) if cache_dir is not None else root / "fused_staple"
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for img_path in images:
        core = img_path.stem
        maps = []
        used = []
        for k in annotators:
            cands = [root / f"Maps{k}_T" / f"{core}{_SUFFIX}.png", root / f"Maps{k}_T" / f"{core}.png"]
            found = next((c for c in cands if c.is_file()), None)
            if found is not None:
                maps.append(found)
                used.append(k)
        if not maps:
            continue
        img_out, lab_out = cache / f"{core}_image.png", cache / f"{core}_label.png"
        if not (img_out.is_file() and lab_out.is_file()):
            image = np.asarray(Image.open(img_path).convert("RGB"))
            raw = [np.asarray(Image.open(m)) for m in maps]
            raw = [r[..., 0] if r.ndim == 3 else r for r in raw]
            for m, r in zip(maps, raw):
                if r.shape != image.shape[:2]:
                    raise ValueError(f"annotation {m} has shape {r.shape}, its image {img_path} {image.shape[:2]}.")
            label = remap_labels(staple_fuse(raw), label_map)
            if crop_size is not None:
                image, label = center_crop(image, crop_size), center_crop(label, crop_size)
            write_png(np.ascontiguousarray(image), img_out)
            write_png(np.ascontiguousarray(label), lab_out)
        match = re.match(r"slide(\d+)_core(\d+)", core)
        out.append({"image": str(img_out), "label": str(lab_out), "id": core, "annotators": used,
                    "slide": int(match.group(1)) if match else None})
    return out
