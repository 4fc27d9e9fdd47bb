"""Intensity transforms (dictionary): :class:`FillNonFinited` in preprocessing, :class:`MaskNonFinited` in
postprocessing (no answer where the image had none)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_fovea.transforms.intensity.array import FillNonFinite

__all__ = ["FillNonFinited", "FillNonFiniteD", "FillNonFiniteDict", "MaskNonFinited", "MaskNonFiniteD",
           "MaskNonFiniteDict"]


class FillNonFinited(MapTransform):
    """Dictionary :class:`~monai_fovea.transforms.intensity.array.FillNonFinite`; with ``policy="fill"`` the bool map of
    replaced pixels is stored as ``d[f"{key}_{mask_postfix}"]`` (on the input's grid) for :class:`MaskNonFinited`.

    Example:
        >>> d = FillNonFinited("image", policy="fill")({"image": torch.tensor([[float("nan"), 2.0]])})
        >>> d["image"].tolist(), d["image_nonfinite"].tolist()
        ([[2.0, 2.0]], [[True, False]])
    """

    def __init__(self, keys: KeysCollection, policy: str = "error", value: float | None = None,
                 mask_postfix: str = "nonfinite", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = FillNonFinite(policy, value)
        self.mask_postfix = mask_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], bad = self.transform(d[key])
            if self.transform.policy == "fill":
                d[f"{key}_{self.mask_postfix}"] = bad
        return d


class MaskNonFinited(MapTransform):
    """Set ``d[key]`` to ``value`` where ``d[mask_key]`` (from :class:`FillNonFinited`, same grid) is True; nothing
    when the mask is absent (policy ``"error"``).

    Example:
        >>> d = MaskNonFinited("pred", "image_nonfinite")({"pred": torch.ones(1, 2), "image_nonfinite": torch.tensor([[True, False]])})
        >>> d["pred"].tolist()
        [[0.0, 1.0]]
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "image_nonfinite", value: float = 0.0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key, self.value = mask_key, value

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.mask_key not in d:
            return d
        for key in self.key_iterator(d):
            pred = d[key]
            bad = torch.as_tensor(d[self.mask_key], device=pred.device).bool()
            if bad.shape[1:] != pred.shape[1:]:
                raise ValueError(f"MaskNonFinited: mask {tuple(bad.shape)} and {key} {tuple(pred.shape)} grids differ")
            out = torch.where(bad.expand_as(pred), torch.full_like(torch.as_tensor(pred), self.value), torch.as_tensor(pred))
            d[key] = MetaTensor(out, meta=dict(pred.meta), applied_operations=list(pred.applied_operations)) \
                if isinstance(pred, MetaTensor) else out
        return d


FillNonFiniteD = FillNonFiniteDict = FillNonFinited
MaskNonFiniteD = MaskNonFiniteDict = MaskNonFinited
