"""Networks of monai_fovea: one network per file; spconv is imported lazily through ``_spconv``."""

__all__: list[str] = []

# --- foveation (one import line per network file) ---
from .foveation_head import FoveationHead  # noqa: E402
from .foveated_segmenter import FOVEATION_MODES, FUSIONS, FoveatedSegmenter  # noqa: E402

__all__ += ["FoveationHead", "FoveatedSegmenter", "FOVEATION_MODES", "FUSIONS"]

# --- segment-then-segment (MONAI's own networks, held as one module for MONAI's engines) ---
from .coarse_fine import CoarseFineNet  # noqa: E402

__all__ += ["CoarseFineNet"]

# --- sparse (these modules must import spconv lazily, inside functions/constructors) ---
from .sparse_as_dense import SparseAsDense  # noqa: E402
from .sparse_completion import SparseCompletionNet  # noqa: E402
from .sparse_unet import SparseUNet  # noqa: E402

__all__ += ["SparseUNet", "SparseCompletionNet", "SparseAsDense"]
