"""Dictionary wrappers of the foveation transforms (``Xd`` with aliases ``XD`` and ``XDict``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import ensure_tuple_rep

from .array import FoveationCenters, MultiScalePatches, RandFoveationCenters

__all__ = [
    "MultiScalePatchesd",
    "MultiScalePatchesD",
    "MultiScalePatchesDict",
    "FoveationCentersd",
    "FoveationCentersD",
    "FoveationCentersDict",
    "RandFoveationCentersd",
    "RandFoveationCentersD",
    "RandFoveationCentersDict",
]


class MultiScalePatchesd(MapTransform):
    """Dictionary wrapper of :class:`MultiScalePatches`: patches of ``keys`` around ``data[centers_key]``.

    Args:
        keys: keys of the images to cut (e.g. ``("image", "label")``).
        centers_key: key of the ``[N, ndim]`` centres (written by :class:`RandFoveationCentersd`).
        patch_sizes, output_size: as :class:`MultiScalePatches`.
        padding_mode, antialias, value, mode: one value or one per key (e.g. ``mode=("bilinear", "nearest")``,
            ``padding_mode=("zeros", "constant")``, ``value=(0, 255)`` for an image and its label map).
        allow_missing_keys: skip absent keys.

    Returns:
        the dictionary with each key replaced by its ``[N, D, C, *output_size]`` patches.

    Example:
        >>> import torch
        >>> t = MultiScalePatchesd(("image", "label"), "centers", [16, 32], 16, mode=("bilinear", "nearest"),
        ...                        antialias=(True, False))
        >>> out = t({"image": torch.rand(1, 64, 64), "label": torch.zeros(1, 64, 64), "centers": [[8, 8]]})
        >>> out["image"].shape, out["label"].shape
        (torch.Size([1, 2, 1, 16, 16]), torch.Size([1, 2, 1, 16, 16]))
    """

    backend = MultiScalePatches.backend

    def __init__(
        self,
        keys: KeysCollection,
        centers_key: str,
        patch_sizes: Sequence[int | Sequence[int]],
        output_size: int | Sequence[int],
        padding_mode: str | Sequence[str] = "zeros",
        antialias: bool | Sequence[bool] = True,
        value: float | Sequence[float] = 0.0,
        mode: str | Sequence[str] = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.centers_key = centers_key
        n = len(self.keys)
        self.transforms = [
            MultiScalePatches(patch_sizes, output_size, padding_mode=p, antialias=a, value=v, mode=m)
            for p, a, v, m in zip(
                ensure_tuple_rep(padding_mode, n), ensure_tuple_rep(antialias, n), ensure_tuple_rep(value, n),
                ensure_tuple_rep(mode, n),
            )
        ]

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.centers_key not in d:
            raise KeyError(f"centers_key {self.centers_key!r} not found in the data (keys: {list(d)}).")
        centers = d[self.centers_key]
        for key, xform in zip(self.keys, self.transforms):
            if key in d:
                d[key] = xform(d[key], centers)
            elif not self.allow_missing_keys:
                raise KeyError(f"key {key!r} not found in the data (keys: {list(d)}).")
        return d


class FoveationCentersd(MapTransform):
    """Dictionary wrapper of :class:`FoveationCenters`: grid centres of ``data[keys[0]]`` into ``centers_key``.

    Args:
        keys: the image key whose spatial shape defines the grid.
        stride: grid pitch in pixels.
        centers_key: output key of the ``[N, ndim]`` centres; the grid shape goes to ``f"{centers_key}_grid"``.

    Returns:
        the dictionary with the centres and grid shape added.

    Example:
        >>> FoveationCentersd("image", stride=8)({"image": np.zeros((1, 16, 16))})["centers_grid"]
        (2, 2)
    """

    backend = FoveationCenters.backend

    def __init__(self, keys: KeysCollection, stride: int | Sequence[int], centers_key: str = "centers") -> None:
        super().__init__(keys)
        self.centers_key = centers_key
        self.centers = FoveationCenters(stride)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        centers, grid = self.centers(d[self.keys[0]])
        d[self.centers_key] = centers
        d[f"{self.centers_key}_grid"] = grid
        return d


class RandFoveationCentersd(Randomizable, MapTransform):
    """Random training locations per image (default 16, as the paper), optionally label-balanced.

    Args:
        keys: the image key whose spatial shape defines the location grid.
        stride: grid pitch in pixels (the head's low-resolution map).
        num_centers: locations per image.
        label_key: label map used when ``balanced`` (class at each grid centre).
        balanced: draw classes uniformly first, then a location of that class (for rare classes).
        ignore_index: label value excluded from balancing.
        centers_key: output key of the int64 ``[num_centers, ndim]`` centres.

    Returns:
        the dictionary with ``centers_key`` added.

    Example:
        >>> t = RandFoveationCentersd("image", stride=8, num_centers=3).set_random_state(seed=0)
        >>> t({"image": np.zeros((1, 32, 32))})["centers"].shape
        torch.Size([3, 2])
    """

    backend = RandFoveationCenters.backend

    def __init__(
        self,
        keys: KeysCollection,
        stride: int | Sequence[int],
        num_centers: int = 16,
        label_key: str | None = None,
        balanced: bool = False,
        ignore_index: int | None = None,
        centers_key: str = "centers",
    ) -> None:
        MapTransform.__init__(self, keys)
        if balanced and label_key is None:
            raise ValueError("balanced=True needs label_key (the label map to balance the classes of).")
        self.label_key = label_key
        self.centers_key = centers_key
        self.sampler = RandFoveationCenters(stride, num_centers, balanced=balanced, ignore_index=ignore_index)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.sampler.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:  # the sampler draws; kept for the Randomizable interface
        pass

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        label = d[self.label_key] if self.label_key is not None else None
        d[self.centers_key] = self.sampler(d[self.keys[0]], label)
        return d


MultiScalePatchesD = MultiScalePatchesDict = MultiScalePatchesd
FoveationCentersD = FoveationCentersDict = FoveationCentersd
RandFoveationCentersD = RandFoveationCentersDict = RandFoveationCentersd
