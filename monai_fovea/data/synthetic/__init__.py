"""Seeded synthetic data for tests and benchmarks, one module per kind of difficulty."""

__all__: list[str] = []

# --- foveation: FoV/resolution trade-off images (fov_tradeoff.py) ---

# --- segment-then-segment: many small objects (small_objects.py) ---

# --- sparse: skull-like shells (skull_shells.py) ---
