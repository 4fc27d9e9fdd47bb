"""Transforms for the sparse strategy: functional.py (pure tensor functions) -> array.py -> dictionary.py."""

__all__: list[str] = []
