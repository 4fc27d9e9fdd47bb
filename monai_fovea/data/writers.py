"""Dictionary transforms that end a bundle's postprocessing by writing its outputs, atomically.

MONAI's ``SaveImaged`` writes straight onto the final file name, so a run killed mid-write leaves a truncated file
that a resumed run would take for a finished one. These writers name their file from the item's ``stem`` and
``output_dir`` (set by :func:`monai_fovea.data.datalist.inference_datalist`) and write through
:func:`monai_fovea.data.io.atomic_output`: an output exists under its final name only when it is complete.

* :class:`SaveNiftid`: a MetaTensor ``[1, X, Y, Z]`` with the affine it carries (after ``Invertd``: the input's).
* :class:`SaveImage2Dd`: a mask ``[1, H, W]`` as PNG, or as TIFF when the input was a TIFF.
* :class:`SaveBoxesJSONd`: boxes ``[K, 2 * ndim]`` (start…, end… exclusive) as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_fovea.data.io import _as_numpy, atomic_output, write_nifti, write_png

__all__ = ["SaveNiftid", "SaveImage2Dd", "SaveBoxesJSONd", "output_path"]


def output_path(d: Mapping[Hashable, Any], postfix: str, suffix: str) -> Path:
    """``<output_dir>/<stem><postfix><suffix>`` for an item of :func:`~monai_fovea.data.datalist.inference_datalist`."""
    if "stem" not in d or "output_dir" not in d:
        raise KeyError("writer: the item needs 'stem' and 'output_dir' (build the dataset with inference_datalist)")
    return Path(str(d["output_dir"])) / f"{d['stem']}{postfix}{suffix}"


def _as_array(x: Any, dtype: Any) -> np.ndarray:
    return _as_numpy(x).astype(dtype)


class SaveNiftid(MapTransform):
    """Write ``d[key]`` (``[1, X, Y, Z]``, MetaTensor) as ``<stem><postfix>.nii.gz`` with its own affine.

    Args:
        keys: the keys to write (one file each).
        postfix: one per key, e.g. ``"_mask"``.
        dtype: on-disk type (labels: ``uint8``).

    Example:
        >>> SaveNiftid("pred", postfix="_mask")({"pred": mask, "stem": "case01", "output_dir": "out"})  # doctest: +SKIP
    """

    def __init__(self, keys: KeysCollection, postfix: str | Sequence[str] = "", dtype: Any = np.uint8) -> None:
        super().__init__(keys)
        self.postfix = [postfix] * len(self.keys) if isinstance(postfix, str) else list(postfix)
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, postfix in zip(self.keys, self.postfix):
            img = d[key]
            affine = img.affine if hasattr(img, "affine") else np.eye(4)
            array = _as_array(img, self.dtype)
            if array.ndim == 4 and array.shape[0] == 1:
                array = array[0]
            d[f"{key}_file"] = str(write_nifti(array, output_path(d, postfix, ".nii.gz"), np.asarray(affine), dtype=self.dtype))
        return d


class SaveImage2Dd(MapTransform):
    """Write a 2D mask ``d[key]`` (``[1, H, W]``, row = H as read with ``reverse_indexing=False``) as
    ``<stem><postfix>.png`` (``.tif`` when the input file was a TIFF), values multiplied by ``scale``.

    Example:
        >>> SaveImage2Dd("pred", postfix="_mask", scale=255)(item)  # doctest: +SKIP
    """

    def __init__(self, keys: KeysCollection, postfix: str = "_mask", scale: int = 255, source_key: str = "image") -> None:
        super().__init__(keys)
        self.postfix, self.scale, self.source_key = postfix, scale, source_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import tifffile

        d = dict(data)
        for key in self.keys:
            array = _as_array(d[key], np.float32)
            array = array[0] if array.ndim == 3 else array
            mask = (array * self.scale).round().clip(0, 255).astype(np.uint8)
            source = str(getattr(d.get(self.source_key), "meta", {}).get("filename_or_obj", ""))
            if source.lower().endswith((".tif", ".tiff")):
                target = output_path(d, self.postfix, ".tif")
                with atomic_output(target) as tmp:
                    tifffile.imwrite(tmp, mask, photometric="minisblack")
            else:
                target = write_png(mask, output_path(d, self.postfix, ".png"))
            d[f"{key}_file"] = str(target)
        return d


class SaveBoxesJSONd(MapTransform):
    """Write the boxes ``d[key]`` (``[K, 2 * ndim]``) as ``<stem><postfix>.json``:
    ``{"image": <input file>, "boxes": [[start…, end…], …]}`` (voxel/pixel indices of the input, end exclusive).

    Example:
        >>> SaveBoxesJSONd("pred_boxes")(item)  # doctest: +SKIP
    """

    def __init__(self, keys: KeysCollection, postfix: str = "_boxes", source_key: str = "image") -> None:
        super().__init__(keys)
        self.postfix, self.source_key = postfix, source_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            boxes = _as_array(d[key], np.int64).reshape(len(d[key]), -1).tolist() if len(d[key]) else []
            source = str(getattr(d.get(self.source_key), "meta", {}).get("filename_or_obj", d.get(self.source_key, "")))
            target = output_path(d, self.postfix, ".json")
            with atomic_output(target) as tmp:
                Path(tmp).write_text(json.dumps({"image": source, "boxes": boxes}))
            d[f"{key}_file"] = str(target)
        return d
