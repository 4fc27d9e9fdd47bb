"""Inferers of monai_fovea."""

__all__: list[str] = []

# --- foveation ---
from .foveated import FoveatedInferer, accumulate_predictions  # noqa: E402

__all__ += ["FoveatedInferer", "accumulate_predictions"]
from .wsi_foveated import WSIFoveatedInferer  # noqa: E402

__all__ += ["WSIFoveatedInferer"]

# --- segment-then-segment ---
from .segment_then_segment import SegmentThenSegmentInferer  # noqa: E402

__all__ += ["SegmentThenSegmentInferer"]

# --- sparse ---
from .sparse import SparseInferer  # noqa: E402

__all__ += ["SparseInferer"]
