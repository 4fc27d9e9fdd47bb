"""MONAI transforms of monai_fovea, one sub-package per strategy, re-exported here.

Each sub-package follows MONAI's croppad layout: ``functional.py`` (pure tensor functions) → ``array.py``
(Transform classes) → ``dictionary.py`` (MapTransform wrappers with ``D``/``Dict`` aliases).
"""

from .boxes import *  # noqa: F401,F403  (segment-then-segment)
from .foveation import *  # noqa: F401,F403
from .sparse import *  # noqa: F401,F403
from .intensity import *  # noqa: F401,F403  (shared: non-finite values)
from .boxes import __all__ as _boxes_all
from .foveation import __all__ as _foveation_all
from .sparse import __all__ as _sparse_all
from .intensity import __all__ as _intensity_all

__all__ = [*_foveation_all, *_boxes_all, *_sparse_all, *_intensity_all]
