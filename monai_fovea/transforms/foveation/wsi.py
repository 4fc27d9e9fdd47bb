"""Multi-scale (foveated) patches read straight from a whole-slide image pyramid.

Array transform :class:`MultiScaleWSIPatches` and its dictionary twin :class:`MultiScaleWSIPatchesd` over
:func:`monai_fovea.data.wsi.read_multiscale`: the same ``[N, D, C, *output_size]`` output and geometry as
:class:`MultiScalePatches` on an in-memory image, but each scale is decoded from the slide level with the fewest
pixels, so a slide never has to fit in memory.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

from monai_fovea.data.wsi import PyramidSlide, read_multiscale, select_level

from .functional import as_size_tuple, patch_affines

__all__ = ["MultiScaleWSIPatches", "MultiScaleWSIPatchesd", "MultiScaleWSIPatchesD", "MultiScaleWSIPatchesDict"]

SlideLike = PyramidSlide | str | os.PathLike


class MultiScaleWSIPatches(Transform):
    """D concentric patches per centre read from a slide pyramid, each resampled to ``output_size``.

    Args:
        patch_sizes: D fields of view in level-0 pixels (int or ``(h, w)``), ascending.
        output_size: pixels per patch (int or ``(h, w)``).
        backend: MONAI ``WSIReader`` backend used to open paths: ``"openslide"``, ``"tifffile"`` or ``"cucim"``.
        level_selection: ``"auto"`` (the level decoding the fewest pixels at ≥ output resolution) or ``"base"``.
        padding_mode: ``"zeros"``, ``"constant"`` (``value``) or ``"border"``; applied identically on every backend.
        value: fill value for ``"constant"`` (e.g. 255 for white glass).
        dtype: output float dtype (the slide's 0–255 range is kept).
        device: where the resize runs and the output lives.

    Returns:
        ``MetaTensor[N, D, 3, *output_size]`` with ``filename_or_obj``, ``foveation_centers`` ``[N, 2]``,
        ``foveation_patch_sizes``, ``foveation_levels`` (slide level read per scale), ``spatial_shape`` (level-0
        size) and ``foveation_affines`` ``[N, D, 3, 3]``: each patch's pixel → slide micrometre map (level-0
        pixel map of :func:`patch_affines` scaled by the slide's mpp; pixels when the slide has no resolution).

    Example:
        >>> t = MultiScaleWSIPatches(patch_sizes=[256, 512, 1024], output_size=256, backend="tifffile")
        >>> t("slide.tif", [[1000, 1200], [1500, 300]]).shape  # doctest: +SKIP
        torch.Size([2, 3, 3, 256, 256])
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        patch_sizes: Sequence[int | Sequence[int]],
        output_size: int | Sequence[int],
        backend: str = "openslide",
        level_selection: str = "auto",
        padding_mode: str = "zeros",
        value: float = 0.0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ) -> None:
        if len(patch_sizes) == 0:
            raise ValueError("patch_sizes must hold at least one field of view.")
        self.patch_sizes = [as_size_tuple(s, 2, f"patch_sizes[{d}]") for d, s in enumerate(patch_sizes)]
        self.output_size = as_size_tuple(output_size, 2, "output_size")
        self.wsi_backend = backend
        self.level_selection = level_selection
        self.padding_mode = padding_mode
        self.value = value
        self.dtype = dtype
        self.device = device

    def __call__(self, slide: SlideLike, centers: Any) -> MetaTensor:
        opened = slide if isinstance(slide, PyramidSlide) else PyramidSlide(slide, self.wsi_backend)
        try:
            out = read_multiscale(
                opened,
                centers,
                self.patch_sizes,
                self.output_size,
                level_selection=self.level_selection,
                padding_mode=self.padding_mode,
                pad_value=self.value,
                dtype=self.dtype,
                device=self.device,
            )
            ctr = torch.as_tensor(np.asarray(centers.cpu() if isinstance(centers, torch.Tensor) else centers), dtype=torch.float64)
            ctr = ctr.reshape(-1, 2)
            mpp = opened.mpp or (1.0, 1.0)
            to_um = torch.diag(torch.tensor([mpp[0], mpp[1], 1.0], dtype=torch.float64))
            levels = [
                select_level(opened.downsamples, s, self.output_size) if self.level_selection == "auto" else 0
                for s in self.patch_sizes
            ]
            meta = {
                "filename_or_obj": opened.path,
                "spatial_shape": np.asarray(opened.shape),
                "mpp": mpp,
                "foveation_centers": ctr,
                "foveation_patch_sizes": list(self.patch_sizes),
                "foveation_levels": levels,
                "foveation_affines": to_um @ patch_affines(ctr, self.patch_sizes, self.output_size),
            }
            return MetaTensor(out, meta=meta)
        finally:
            if opened is not slide:
                opened.close()


class MultiScaleWSIPatchesd(MapTransform):
    """Dictionary wrapper of :class:`MultiScaleWSIPatches`: ``data[key]`` is a slide path (or open
    :class:`PyramidSlide`), replaced by its ``[N, D, 3, *output_size]`` patches around ``data[centers_key]``.

    Args:
        keys: keys holding slide paths.
        centers_key: key of the ``[N, 2]`` level-0 centres (e.g. from :class:`RandFoveationCentersd` run on the
            slide's level-0 shape, or a list of annotated points).
        patch_sizes, output_size, backend, level_selection, padding_mode, value, dtype, device: as
            :class:`MultiScaleWSIPatches`.
        allow_missing_keys: skip absent keys.

    Returns:
        the dictionary with each key replaced by its patches (a MetaTensor with the slide path in its meta).

    Example:
        >>> t = MultiScaleWSIPatchesd("image", "centers", [256, 1024], 256, backend="tifffile")
        >>> t({"image": "slide.tif", "centers": [[1000, 1000]]})["image"].shape  # doctest: +SKIP
        torch.Size([1, 2, 3, 256, 256])
    """

    backend = MultiScaleWSIPatches.backend

    def __init__(
        self,
        keys: KeysCollection,
        centers_key: str,
        patch_sizes: Sequence[int | Sequence[int]],
        output_size: int | Sequence[int],
        backend: str = "openslide",
        level_selection: str = "auto",
        padding_mode: str = "zeros",
        value: float = 0.0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.centers_key = centers_key
        self.reader = MultiScaleWSIPatches(
            patch_sizes, output_size, backend, level_selection, padding_mode, value, dtype, device
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.centers_key not in d:
            raise KeyError(f"centers_key {self.centers_key!r} not found in the data (keys: {list(d)}).")
        for key in self.key_iterator(d):
            d[key] = self.reader(d[key], d[self.centers_key])
        return d


MultiScaleWSIPatchesD = MultiScaleWSIPatchesDict = MultiScaleWSIPatchesd
