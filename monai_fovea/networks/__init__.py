"""Networks of monai_fovea: one network per file; spconv is imported lazily through ``_spconv``."""

__all__: list[str] = []

# --- foveation (one import line per network file) ---

# --- segment-then-segment (uses MONAI's own networks; nothing of its own yet) ---

# --- sparse (these modules must import spconv lazily, inside functions/constructors) ---
