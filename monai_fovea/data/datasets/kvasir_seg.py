"""Kvasir-SEG polyp segmentation: ``images/<name>.jpg`` and ``masks/<name>.jpg`` (same names; masks are JPEG, so
threshold them at 127 when loading)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["kvasir_seg_datalist"]

_SUFFIXES = (".jpg", ".jpeg", ".png")


def kvasir_seg_datalist(root: str | Path) -> list[dict[str, str]]:
    """``[{"image", "label", "id"}]`` pairing ``images/X`` with ``masks/X`` (by file stem), sorted by name.

    Args:
        root: the ``Kvasir-SEG`` folder holding ``images/`` and ``masks/``.

    Returns:
        the datalist; a clear error if an image has no mask.

    Example:
        >>> kvasir_seg_datalist("/data/Kvasir-SEG")[0]["id"]  # doctest: +SKIP
        'cju0qkwl35piu0993l0dewei2'
    """
    root = Path(root).expanduser()
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise FileNotFoundError(f"root: Kvasir-SEG folder {root} must contain images/ and masks/.")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() in _SUFFIXES}
    items = []
    for image in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in _SUFFIXES):
        if image.stem not in masks:
            raise FileNotFoundError(f"root: image {image.name} has no mask in {masks_dir}.")
        items.append({"image": str(image), "label": str(masks[image.stem]), "id": image.stem})
    if not items:
        raise FileNotFoundError(f"root: no images in {images_dir}.")
    return items
