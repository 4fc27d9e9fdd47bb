"""Inferers of monai_fovea."""

__all__: list[str] = []

# --- foveation ---

# --- segment-then-segment ---

# --- sparse ---
