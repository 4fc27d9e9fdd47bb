"""Transforms for the boxes strategy: functional.py (pure tensor functions) -> array.py -> dictionary.py."""

from .array import ComponentBoxes, CropResizeBoxes, ExpandBoxes, PasteBoxes, RandComponentCrop, RandJitterBoxes
from .dictionary import *  # noqa: F401,F403
from .dictionary import __all__ as _dictionary_all
from .functional import component_boxes, crop_resize_boxes, expand_boxes, jitter_boxes, paste_boxes

__all__: list[str] = [
    "ComponentBoxes",
    "ExpandBoxes",
    "RandJitterBoxes",
    "CropResizeBoxes",
    "PasteBoxes",
    "RandComponentCrop",
    *_dictionary_all,
    "component_boxes",
    "expand_boxes",
    "jitter_boxes",
    "crop_resize_boxes",
    "paste_boxes",
]
