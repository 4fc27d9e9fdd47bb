"""The skull-completion bundle's input contract and postprocessing as MONAI dictionary transforms.

* :class:`SkullInputd` — the model expects a *binary skull mask*. A CT in HU (many distinct values, negative air)
  is refused with a message saying how to pass it (``--input_kind ct``: bone = HU >= ``bone_threshold``, 226 by
  default, the threshold that reproduces the ``ct_head`` sample's bone mask), and an empty mask is refused, both
  naming the file.
* :class:`ImplantFromOccupancyd` — predicted occupancy (logit > 0) minus the defective skull, opened, largest
  26-connected component (the seed's postprocessing), in the model's frame, before ``Invertd``.
* :class:`CompletedSkulld` — defective skull (on the input's grid) ∪ implant (inverted to the input's grid).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["SkullInputd", "ImplantFromOccupancyd", "CompletedSkulld", "INPUT_KINDS"]

INPUT_KINDS = ("mask", "ct")


def _source(img: Any) -> str:
    return str(getattr(img, "meta", {}).get("filename_or_obj", "input"))


def _like(array: torch.Tensor, ref: Any) -> torch.Tensor:
    """``array`` as a MetaTensor carrying ``ref``'s meta data and affine (so ``Invertd`` and writers can use it)."""
    if isinstance(ref, MetaTensor):
        return MetaTensor(array, affine=ref.affine, meta=dict(ref.meta))
    return MetaTensor(array)


class SkullInputd(MapTransform):
    """Check (``input_kind="mask"``) or make (``"ct"``) the binary skull mask the model expects; float 0/1 out.

    Args:
        keys: image key(s), channel-first ``[1, X, Y, Z]``.
        input_kind: ``"mask"`` — a binary mask (any two values, 0 = background: ``{0, 1}``, ``{0, 255}``, bool);
            ``"ct"`` — a CT in Hounsfield units, thresholded at ``bone_threshold``.
        bone_threshold: HU threshold for ``"ct"`` (226: the ``ct_head`` sample's bone mask is exactly HU >= 226).

    Raises:
        ValueError: naming the file — not 3D; non-finite values; a mask that is not binary (says how to pass a CT);
            an empty mask.

    Example:
        >>> SkullInputd("image", input_kind="ct")({"image": ct})["image"].unique()  # doctest: +SKIP
        tensor([0., 1.])
    """

    def __init__(self, keys: KeysCollection, input_kind: str = "mask", bone_threshold: float = 226.0) -> None:
        super().__init__(keys)
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
        self.input_kind, self.bone_threshold = input_kind, float(bone_threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            img = d[key]
            name = _source(img)
            x = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img)
            if x.ndim != 4 or x.shape[0] != 1:
                raise ValueError(f"{name}: expected a single 3D volume [X, Y, Z], got shape {tuple(x.shape[1:]) if x.ndim else ()}"
                                 f" with {x.shape[0] if x.ndim else 0} channel(s)")
            bad = int((~torch.isfinite(x.float())).sum())
            if bad:
                raise ValueError(f"{name}: {bad} voxel(s) are NaN or infinite; the skull mask must be finite")
            if self.input_kind == "ct":
                mask = x >= self.bone_threshold
            else:
                values = torch.unique(x)
                if len(values) > 2 or values.min() < 0:
                    lo, hi = float(values.min()), float(values.max())
                    raise ValueError(
                        f"{name}: not a binary skull mask ({len(values)} distinct values in [{lo:g}, {hi:g}]); if it "
                        f"is a CT in HU, run with --input_kind ct (bone = HU >= {self.bone_threshold:g}, "
                        f"--bone_threshold to change)"
                    )
                mask = x > 0
            if not mask.any():
                raise ValueError(f"{name}: the skull mask is empty (no voxel > 0)" if self.input_kind == "mask" else
                                 f"{name}: no voxel reaches HU >= {self.bone_threshold:g}: no bone to complete")
            d[key] = _like(mask.float(), img)
        return d


class ImplantFromOccupancyd(MapTransform):
    """Occupancy logits ``[1, *S]`` → implant ``[1, *S]`` float 0/1 (the seed's postprocessing; see
    :func:`monai_fovea.apps.sparse_completion.postprocess_implant`), with the defective skull from
    ``defective_key`` in the same (model) frame. The result keeps the logits' meta data, for ``Invertd``.

    Example:
        >>> ImplantFromOccupancyd("pred", defective_key="defective")(item)["pred"].sum()  # doctest: +SKIP
    """

    def __init__(self, keys: KeysCollection, defective_key: str = "defective", vault_fraction: float | None = None) -> None:
        super().__init__(keys)
        self.defective_key, self.vault_fraction = defective_key, vault_fraction

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai_fovea.apps.sparse_completion import postprocess_implant

        d = dict(data)
        defective = np.asarray(torch.as_tensor(d[self.defective_key]).detach().cpu()[0] > 0.5)
        for key in self.keys:
            logits = torch.as_tensor(d[key]).detach().cpu()
            implant = postprocess_implant(logits[0] > 0, defective, self.vault_fraction)
            d[key] = _like(torch.from_numpy(implant[None].astype(np.float32)), d[key] if isinstance(d[key], MetaTensor) else d[self.defective_key])
        return d


class CompletedSkulld(MapTransform):
    """``d[output_key] = d[defective_key] ∪ d[implant_key]`` (both on the input's grid), with the defective
    skull's meta data (the input's affine); the implant loses any voxel of the given skull (nearest-neighbour
    inversion from the model's grid can put a few there).

    Example:
        >>> CompletedSkulld("pred", defective_key="defective_input", output_key="completed")(item)  # doctest: +SKIP
    """

    def __init__(self, implant_key: str = "pred", defective_key: str = "defective_input", output_key: str = "completed") -> None:
        super().__init__([implant_key])
        self.implant_key, self.defective_key, self.output_key = implant_key, defective_key, output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        defective = d[self.defective_key]
        implant = torch.as_tensor(d[self.implant_key]).detach().cpu() > 0.5
        base = torch.as_tensor(defective).detach().cpu() > 0.5
        if implant.shape != base.shape:
            raise ValueError(f"{_source(defective)}: implant {tuple(implant.shape)} and input {tuple(base.shape)} grids differ")
        implant &= ~base  # on the input's grid too, the implant only adds voxels to the given skull
        d[self.implant_key] = _like(implant.float(), d[self.implant_key] if isinstance(d[self.implant_key], MetaTensor) else defective)
        d[self.output_key] = _like((implant | base).float(), defective)
        return d
