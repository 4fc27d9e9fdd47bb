"""Dictionary twins of the segment-then-segment box transforms (``Xd`` with aliases ``XD`` and ``XDict``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from monai.utils import ensure_tuple_rep

from .array import (
    ComponentBoxes,
    CropResizeBoxes,
    ExpandBoxes,
    PasteBoxes,
    RandComponentCrop,
    RandJitterBoxes,
    _crop_one,
)

__all__ = [
    "ComponentBoxesd", "ComponentBoxesD", "ComponentBoxesDict",
    "ExpandBoxesd", "ExpandBoxesD", "ExpandBoxesDict",
    "RandJitterBoxesd", "RandJitterBoxesD", "RandJitterBoxesDict",
    "CropResizeBoxesd", "CropResizeBoxesD", "CropResizeBoxesDict",
    "PasteBoxesd", "PasteBoxesD", "PasteBoxesDict",
    "RandComponentCropd", "RandComponentCropD", "RandComponentCropDict",
]  # fmt: skip


class ComponentBoxesd(MapTransform):
    """Dictionary :class:`ComponentBoxes`: ``data[key]`` (mask) → ``data[f"{key}_{box_postfix}"]`` (boxes) and
    ``data[f"{key}_{class_postfix}"]`` (component classes).

    Args:
        keys: mask keys.
        connectivity, min_size: see :class:`ComponentBoxes`.
        box_postfix, class_postfix: output key suffixes.
        threshold: binarise probability maps as ``mask > threshold`` first; ``None``: integer labels (see
            :class:`ComponentBoxes`).

    Returns:
        the dictionary with the boxes and classes added.

    Raises:
        ValueError: ``threshold`` is None and a mask has non-integer values.

    Example:
        >>> d = ComponentBoxesd("label", min_size=1)({"label": np.ones((1, 4, 4))})
        >>> d["label_boxes"].tolist(), d["label_classes"].tolist()
        ([[0, 0, 4, 4]], [1])
        >>> d = ComponentBoxesd("prob", min_size=1, threshold=0.5)({"prob": np.full((1, 4, 4), 0.8)})
        >>> d["prob_boxes"].tolist()
        [[0, 0, 4, 4]]
    """

    backend = ComponentBoxes.backend

    def __init__(
        self,
        keys: KeysCollection,
        connectivity: int | None = None,
        min_size: int = 5,
        box_postfix: str = "boxes",
        class_postfix: str = "classes",
        allow_missing_keys: bool = False,
        threshold: float | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = ComponentBoxes(connectivity, min_size, threshold)
        self.box_postfix, self.class_postfix = box_postfix, class_postfix

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}_{self.box_postfix}"], d[f"{key}_{self.class_postfix}"] = self.op(d[key])
        return d


class ExpandBoxesd(MapTransform):
    """Dictionary :class:`ExpandBoxes` on box keys; the image size comes from ``image_size`` or ``data[image_key]``.

    Args:
        keys: box keys.
        image_key: key of the full-resolution image whose spatial size bounds the boxes.
        scale, margin, square, min_size, image_size, relative_margin: see :class:`ExpandBoxes`.

    Returns:
        the dictionary with expanded boxes.

    Example:
        >>> t = ExpandBoxesd("boxes", image_key="image", margin=1)
        >>> d = t({"boxes": np.array([[0, 0, 2, 4]]), "image": np.zeros((1, 8, 8))})
        >>> d["boxes"].tolist()
        [[0, 0, 6, 6]]
    """

    backend = ExpandBoxes.backend

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str | None = None,
        scale: float | Sequence[float] = 1.0,
        margin: int = 0,
        square: bool = True,
        min_size: int = 5,
        image_size: Sequence[int] | None = None,
        relative_margin: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if image_key is None and image_size is None:
            raise ValueError("ExpandBoxesd needs image_key or image_size.")
        self.image_key = image_key
        self.op = ExpandBoxes(scale, margin, square, min_size, image_size, relative_margin)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        size = tuple(d[self.image_key].shape[1:]) if self.image_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.op(d[key], size)
        return d


class RandJitterBoxesd(Randomizable, MapTransform):
    """Dictionary :class:`RandJitterBoxes` (each key jittered independently).

    Args:
        keys: box keys.
        max_shift: see :class:`RandJitterBoxes`.

    Returns:
        the dictionary with jittered boxes.

    Example:
        >>> RandJitterBoxesd("b", max_shift=0)({"b": np.array([[1, 1, 3, 3]])})["b"].tolist()
        [[1, 1, 3, 3]]
    """

    backend = RandJitterBoxes.backend

    def __init__(self, keys: KeysCollection, max_shift: int = 16, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.op = RandJitterBoxes(max_shift)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.op.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        self.op.randomize()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.op(d[key], randomize=True)
        return d


class CropResizeBoxesd(MapTransform):
    """Dictionary :class:`CropResizeBoxes`: every key cropped at the boxes in ``data[box_key]``.

    Args:
        keys: image / label keys.
        box_key: key of the ``[K, 2 * ndim]`` boxes.
        output_size: crop size.
        mode: one mode or one per key (``"bilinear"`` for images, ``"nearest"`` for labels).

    Returns:
        the dictionary with ``[K, C, *output_size]`` crops in place of the images.

    Example:
        >>> d = CropResizeBoxesd(["img"], "boxes", (2, 2))({"img": torch.ones(1, 4, 4), "boxes": [[0, 0, 2, 2]]})
        >>> tuple(d["img"].shape)
        (1, 1, 2, 2)
    """

    backend = CropResizeBoxes.backend

    def __init__(
        self,
        keys: KeysCollection,
        box_key: str,
        output_size: Sequence[int],
        mode: str | Sequence[str] = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_key = box_key
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.op = CropResizeBoxes(output_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.op(d[key], d[self.box_key], mode)
        return d


class PasteBoxesd(MapTransform):
    """Dictionary :class:`PasteBoxes`: crops in ``data[key]`` pasted back at ``data[box_key]``.

    Args:
        keys: crop keys.
        box_key: key of the boxes.
        image_size: full-resolution size, or ``ref_key`` (the image whose spatial size to use).
        reduction, mode, fill: see :class:`PasteBoxes`.

    Returns:
        the dictionary with full-resolution maps in place of the crops.

    Example:
        >>> t = PasteBoxesd("pred", "boxes", image_size=(4, 4))
        >>> d = t({"pred": torch.ones(1, 1, 2, 2), "boxes": [[2, 2, 4, 4]]})
        >>> int(d["pred"].sum())
        4
    """

    backend = PasteBoxes.backend

    def __init__(
        self,
        keys: KeysCollection,
        box_key: str,
        image_size: Sequence[int] | None = None,
        ref_key: str | None = None,
        reduction: str = "or",
        mode: str | None = None,
        fill: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if image_size is None and ref_key is None:
            raise ValueError("PasteBoxesd needs image_size or ref_key.")
        self.box_key, self.ref_key = box_key, ref_key
        self.op = PasteBoxes(image_size, reduction, mode, fill)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        size = tuple(d[self.ref_key].shape[1:]) if self.ref_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.op(d[key], d[self.box_key], size)
        return d


class RandComponentCropd(Randomizable, MapTransform):
    """Fine-network training sample: one random ground-truth component crop (jittered, squared, padded), the whole
    image when the label is empty. Every key is cropped at the same box (images linear, ``label_key`` nearest).

    Args:
        keys: keys to crop (must include ``label_key``).
        label_key: the ground-truth mask whose components are cropped.
        output_size: crop size (the fine net's input size).
        margin, max_shift, connectivity, min_size: see :class:`RandComponentCrop`.
        box_key: where to store the chosen full-resolution box.

    Returns:
        the dictionary with crops and ``data[box_key]``.

    Example:
        >>> lab = np.zeros((1, 32, 32)); lab[0, 8:12, 8:12] = 1
        >>> t = RandComponentCropd(["image", "label"], "label", (16, 16), max_shift=0)
        >>> out = t({"image": np.random.rand(1, 32, 32), "label": lab})
        >>> out["box"].tolist()
        [6, 6, 14, 14]
    """

    backend = RandComponentCrop.backend

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        output_size: Sequence[int],
        margin: int | None = None,
        max_shift: int = 16,
        connectivity: int | None = None,
        min_size: int = 1,
        box_key: str = "box",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if label_key not in self.keys:
            raise ValueError(f"label_key {label_key!r} must be one of keys {self.keys}.")
        self.label_key, self.box_key = label_key, box_key
        self.op = RandComponentCrop(output_size, margin, max_shift, connectivity, min_size)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.op.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        pass  # the crop's randomness depends on the label: drawn in op.choose_box

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        box = self.op.choose_box(d[self.label_key], randomize=True)
        for key in self.key_iterator(d):
            mode = "nearest" if key == self.label_key else "bilinear"
            d[key] = _crop_one(d[key], box, self.op.output_size, mode)
        is_tensor = isinstance(d[self.label_key], torch.Tensor)
        d[self.box_key] = torch.as_tensor(box) if is_tensor else np.asarray(box, np.int64)
        return d


ComponentBoxesD = ComponentBoxesDict = ComponentBoxesd
ExpandBoxesD = ExpandBoxesDict = ExpandBoxesd
RandJitterBoxesD = RandJitterBoxesDict = RandJitterBoxesd
CropResizeBoxesD = CropResizeBoxesDict = CropResizeBoxesd
PasteBoxesD = PasteBoxesDict = PasteBoxesd
RandComponentCropD = RandComponentCropDict = RandComponentCropd
