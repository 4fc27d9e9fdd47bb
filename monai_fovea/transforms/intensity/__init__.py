"""Intensity transforms shared by the pipelines: non-finite values (NaN, inf) refused or replaced."""

from .array import FillNonFinite
from .dictionary import (
    FillNonFiniteD,
    FillNonFiniteDict,
    FillNonFinited,
    MaskNonFiniteD,
    MaskNonFiniteDict,
    MaskNonFinited,
)
from .functional import NAN_POLICIES, fill_non_finite

__all__ = [
    "FillNonFinite", "FillNonFinited", "FillNonFiniteD", "FillNonFiniteDict", "MaskNonFinited", "MaskNonFiniteD",
    "MaskNonFiniteDict", "NAN_POLICIES", "fill_non_finite",
]
