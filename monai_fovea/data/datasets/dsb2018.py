"""2018 Data Science Bowl (BBBC038) ``stage1_train``: one folder per image, one PNG per nucleus.

Layout::

    stage1_train/<id>/images/<id>.png
    stage1_train/<id>/masks/<mask_id>.png     (one binary PNG per nucleus)

The per-nucleus masks are merged once into an instance map (``uint16``, nucleus ``i`` = value ``i``, in sorted
mask-file order) written as ``<cache_dir>/<id>_label.png``; a later call reuses it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["dsb2018_datalist", "merge_instance_masks"]


def merge_instance_masks(mask_files: list[Path]) -> np.ndarray:
    """Instance map from one binary PNG per instance (later files win where masks overlap)."""
    from PIL import Image

    merged = None
    for value, path in enumerate(sorted(mask_files), start=1):
        mask = np.asarray(Image.open(path))
        mask = mask[..., 0] if mask.ndim == 3 else mask
        if merged is None:
            merged = np.zeros(mask.shape, np.uint16)
        if mask.shape != merged.shape:
            raise ValueError(f"mask {path} has shape {mask.shape}, the other masks of its image {merged.shape}.")
        merged[mask > 0] = value
    if merged is None:
        raise ValueError("merge_instance_masks needs at least one mask file.")
    return merged


def dsb2018_datalist(root: str | Path, cache_dir: str | Path | None = None) -> list[dict[str, str]]:
    """``[{"image": <id>.png, "label": merged instance map, "id": <id>}]`` for every image folder under ``root``.

    Args:
        root: the ``stage1_train`` folder.
        cache_dir: where merged label maps go (default ``<root>/../stage1_train_labels``).

    Returns:
        datalist sorted by image id; images without a ``masks/`` folder are skipped (stage1_test layout).

    Example:
        >>> dsb2018_datalist("/data/dsb2018/stage1_train")[0]["label"]  # doctest: +SKIP
        '/data/dsb2018/stage1_train_labels/00071198d059ba7f_label.png'
    """
    from monai_fovea.data.io import write_png

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"root: DSB2018 stage1_train folder {root} does not exist.")
    cache = Path(cache_dir) if cache_dir is not None else root.parent / f"{root.name}_labels"
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted((folder / "images").glob("*.png"))
        masks = sorted((folder / "masks").glob("*.png"))
        if not images or not masks:
            continue
        label = cache / f"{folder.name}_label.png"
        if not label.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            write_png(merge_instance_masks(masks), label)
        items.append({"image": str(images[0]), "label": str(label), "id": folder.name})
    if not items:
        raise FileNotFoundError(f"root: no <id>/images/*.png with <id>/masks/*.png under {root}.")
    return items
