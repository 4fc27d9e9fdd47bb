"""Transforms for the sparse strategy: functional.py (pure tensor functions) -> array.py -> dictionary.py."""

from .array import EdgeShell, RandSkullDefect, SparseToDense, ToSparse
from .dictionary import (
    EdgeShellD,
    EdgeShelld,
    EdgeShellDict,
    RandSkullDefectD,
    RandSkullDefectd,
    RandSkullDefectDict,
    SparseToDenseD,
    SparseToDensed,
    SparseToDenseDict,
    ToSparseD,
    ToSparsed,
    ToSparseDict,
)

__all__ = [
    "ToSparse", "SparseToDense", "EdgeShell", "RandSkullDefect",
    "ToSparsed", "ToSparseD", "ToSparseDict",
    "SparseToDensed", "SparseToDenseD", "SparseToDenseDict",
    "EdgeShelld", "EdgeShellD", "EdgeShellDict",
    "RandSkullDefectd", "RandSkullDefectD", "RandSkullDefectDict",
]
