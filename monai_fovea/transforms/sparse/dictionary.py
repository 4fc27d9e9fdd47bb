"""Dictionary wrappers of the sparse transforms (``Xd`` with aliases ``XD`` and ``XDict``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from monai_fovea.transforms.sparse import functional as F
from monai_fovea.transforms.sparse.array import EdgeShell, RandSkullDefect, SparseToDense, ToSparse

__all__ = [
    "ToSparsed", "ToSparseD", "ToSparseDict",
    "SparseToDensed", "SparseToDenseD", "SparseToDenseDict",
    "EdgeShelld", "EdgeShellD", "EdgeShellDict",
    "RandSkullDefectd", "RandSkullDefectD", "RandSkullDefectDict",
]


class ToSparsed(MapTransform):
    """Dictionary version of :class:`~monai_fovea.transforms.sparse.array.ToSparse`.

    Args:
        keys: keys of the dense images to convert (replaced by ``SparseVolume`` values).
        threshold, features: as in ``ToSparse``.
        allow_missing_keys: don't raise for missing keys.

    Example::

        ToSparsed("image", features="ones")({"image": mask})["image"]   # a SparseVolume
    """

    backend = ToSparse.backend

    def __init__(self, keys: KeysCollection, threshold: float = 0.0, features: str = "ones",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToSparse(threshold, features)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class SparseToDensed(MapTransform):
    """Dictionary version of :class:`~monai_fovea.transforms.sparse.array.SparseToDense`.

    Example::

        SparseToDensed("pred")({"pred": sparse_volume})["pred"]   # MetaTensor [C, *S]
    """

    backend = SparseToDense.backend

    def __init__(self, keys: KeysCollection, background: float = 0.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = SparseToDense(background)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class EdgeShelld(MapTransform):
    """Dictionary version of :class:`~monai_fovea.transforms.sparse.array.EdgeShell`.

    Example::

        EdgeShelld("defective")({"defective": skull})   # the one-voxel surface, same type and meta
    """

    backend = EdgeShell.backend

    def __init__(self, keys: KeysCollection, thickness: int = 1, connectivity: int = 1,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.shell = EdgeShell(thickness, connectivity)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.shell(d[key])
        return d


class RandSkullDefectd(Randomizable, MapTransform):
    """Dictionary version of :class:`~monai_fovea.transforms.sparse.array.RandSkullDefect`.

    Reads the complete skull from ``keys`` (one key) and writes ``defective_key`` and ``implant_key`` (the
    complete skull stays under its key).

    Args:
        keys: the key of the complete skull mask ``[1, *S]``.
        defective_key: output key of the defective skull.
        implant_key: output key of the implant.
        radius_range, shapes, superior_axis, vault_fraction, superior_is_high: as in ``RandSkullDefect``.

    Example::

        t = RandSkullDefectd("skull", radius_range=(6, 10)).set_random_state(seed=0)
        d = t({"skull": skull})    # d["defective"] | d["implant"] == skull
    """

    backend = RandSkullDefect.backend

    def __init__(self, keys: KeysCollection, defective_key: str = "defective", implant_key: str = "implant",
                 radius_range: Sequence[float] = (8, 16), shapes: Sequence[str] = F.DEFECT_SHAPES,
                 superior_axis: int = -1, vault_fraction: float = 0.5, superior_is_high: bool = True,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandSkullDefectd takes exactly one key (the complete skull), got {self.keys}.")
        self.defective_key = defective_key
        self.implant_key = implant_key
        self.cutter = RandSkullDefect(radius_range, shapes, superior_axis, vault_fraction, superior_is_high)

    def set_random_state(self, seed: int | None = None, state=None) -> RandSkullDefectd:
        super().set_random_state(seed, state)
        self.cutter.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        # the cutter draws from its own (seeded) state; nothing else is random here.
        pass

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.defective_key], d[self.implant_key] = self.cutter(d[key])
        return d


ToSparseD = ToSparseDict = ToSparsed
SparseToDenseD = SparseToDenseDict = SparseToDensed
EdgeShellD = EdgeShellDict = EdgeShelld
RandSkullDefectD = RandSkullDefectDict = RandSkullDefectd
