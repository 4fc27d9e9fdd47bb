"""Seeded synthetic data for tests and benchmarks, one module per kind of difficulty."""

__all__: list[str] = []

# --- foveation: FoV/resolution trade-off images (fov_tradeoff.py) ---
from .fov_tradeoff import FOV_TRADEOFF_CLASSES, fov_tradeoff  # noqa: E402

__all__ += ["fov_tradeoff", "FOV_TRADEOFF_CLASSES"]

# --- segment-then-segment: many small objects (small_objects.py) ---
from .small_objects import small_objects  # noqa: E402

__all__ += ["small_objects"]

# --- sparse: skull-like shells (skull_shells.py) ---
from .skull_shells import skull_shell  # noqa: E402

__all__ += ["skull_shell"]
