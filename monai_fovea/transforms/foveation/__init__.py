"""Transforms for the foveation strategy: functional.py (pure tensor functions) -> array.py -> dictionary.py."""

from .array import FoveationCenters, MultiScalePatches, RandFoveationCenters, grid_centers
from .dictionary import (
    FoveationCentersd,
    FoveationCentersD,
    FoveationCentersDict,
    MultiScalePatchesd,
    MultiScalePatchesD,
    MultiScalePatchesDict,
    RandFoveationCentersd,
    RandFoveationCentersD,
    RandFoveationCentersDict,
)
from .functional import build_pyramid, multiscale_patches
from .wsi import MultiScaleWSIPatches, MultiScaleWSIPatchesd, MultiScaleWSIPatchesD, MultiScaleWSIPatchesDict

__all__ = [
    "MultiScalePatches",
    "MultiScalePatchesd",
    "MultiScalePatchesD",
    "MultiScalePatchesDict",
    "FoveationCenters",
    "FoveationCentersd",
    "FoveationCentersD",
    "FoveationCentersDict",
    "RandFoveationCenters",
    "RandFoveationCentersd",
    "RandFoveationCentersD",
    "RandFoveationCentersDict",
    "MultiScaleWSIPatches",
    "MultiScaleWSIPatchesd",
    "MultiScaleWSIPatchesD",
    "MultiScaleWSIPatchesDict",
    "grid_centers",
    "multiscale_patches",
    "build_pyramid",
    "MultiScaleWSIPatches",
    "MultiScaleWSIPatchesd",
    "MultiScaleWSIPatchesD",
    "MultiScaleWSIPatchesDict",
]
