"""Runnable entry points (training loops, demo) used by the bundles and tutorials; one module per pipeline.

``bundles`` is imported here because bundle configs say ``"$from monai_fovea.apps import bundles"``, and MONAI's
config import of that form is a plain attribute lookup on this package (it does not import sub-modules).
"""

from . import bundles

__all__ = ["bundles"]
