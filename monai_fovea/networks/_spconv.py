"""The one place where monai_fovea imports spconv.

Every sparse network and transform imports spconv through :func:`require_spconv` (or the module-level ``spconv``
/ ``spconv_torch`` names after calling it), so that

* a missing spconv gives one clear ``ImportError`` that names the right package for this machine
  (``spconv`` on a CPU-only machine, ``spconv-cu118`` / ``spconv-cu12x`` where CUDA is available);
* the CPU compatibility fix below is applied exactly once, and only where it is needed.

Why the CPU fix exists
----------------------
The CPU wheel of spconv (``pip install spconv``) runs forward passes on the CPU, but several of its autograd
functions ask ``torch.cuda.current_stream()`` for a stream handle *before* checking the device, which raises
"Torch not compiled with CUDA enabled" on a CPU build of torch -- so training fails on CPU. The handle is
only used by CUDA kernels; CPU kernels ignore it. When CUDA is unavailable we therefore replace spconv's
``get_current_stream`` (imported by name into ``cppcore``, ``ops``, ``hash`` and ``utils``) by a function that
returns the null stream ``0``. With CUDA available nothing is touched.

Example::

    from monai_fovea.networks._spconv import require_spconv
    spconv = require_spconv()          # the ``spconv.pytorch`` module
    conv = spconv.SubMConv3d(1, 8, 3, indice_key="subm0")
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch

__all__ = ["require_spconv", "spconv_available", "cpu_fix_applied", "install_hint", "deterministic_threads"]

# Modules of spconv.pytorch that import ``get_current_stream`` by name; each keeps its own reference.
_STREAM_USERS = ("cppcore", "ops", "hash", "utils")

_spconv_torch: ModuleType | None = None
_cpu_fix_applied = False


def install_hint() -> str:
    """The pip command that installs the spconv build matching this machine."""
    if torch.cuda.is_available() and torch.version.cuda:
        major, minor = (int(p) for p in torch.version.cuda.split(".")[:2])
        if major == 11:
            pkg = "spconv-cu118"
        else:  # spconv publishes cu120/121/124/126 wheels; pick the closest not newer than torch's CUDA.
            pkg = "spconv-cu" + {0: "120", 1: "121", 2: "121", 3: "121"}.get(minor, "124" if minor < 6 else "126")
        return f"pip install {pkg}  (torch was built for CUDA {torch.version.cuda}; install only one spconv package)"
    return "pip install spconv  (the CPU build; on a GPU machine install spconv-cu118 or spconv-cu12x instead)"


def _null_stream() -> int:
    return 0


def _apply_cpu_fix(spconv_torch: ModuleType) -> bool:
    """Point spconv's stream lookups at the null stream when torch has no usable CUDA."""
    if torch.cuda.is_available():
        return False
    for name in _STREAM_USERS:
        module = importlib.import_module(f"{spconv_torch.__name__}.{name}")
        if hasattr(module, "get_current_stream"):
            module.get_current_stream = _null_stream
    return True


def require_spconv() -> ModuleType:
    """Import ``spconv.pytorch`` (once), apply the CPU fix where needed, and return it.

    Raises:
        ImportError: spconv is not installed (or a CUDA-only build is installed on a machine without CUDA);
            the message names the package to install.
    """
    global _spconv_torch, _cpu_fix_applied
    if _spconv_torch is not None:
        return _spconv_torch
    try:
        spconv_torch = importlib.import_module("spconv.pytorch")
    except (ImportError, AssertionError, RuntimeError) as err:
        # spconv-cu1xx asserts inside torch.cuda on a machine without CUDA; report that as an import problem.
        raise ImportError(f"monai_fovea's sparse networks need spconv, which could not be imported ({err!r}). "
                          f"Install it with: {install_hint()}") from err
    _cpu_fix_applied = _apply_cpu_fix(spconv_torch)
    _spconv_torch = spconv_torch
    return spconv_torch


def spconv_available() -> bool:
    """True when :func:`require_spconv` would succeed."""
    try:
        require_spconv()
    except ImportError:
        return False
    return True


def cpu_fix_applied() -> bool:
    """Whether the CPU stream fix is active (only after :func:`require_spconv` ran on a machine without CUDA)."""
    return _cpu_fix_applied


@contextlib.contextmanager
def deterministic_threads(device: Any) -> Iterator[None]:
    """Run the enclosed sparse forward pass with one intra-op thread when ``device`` is a CPU.

    Why: with several torch threads, spconv's CPU path gives different outputs run after run (measured on the
    skull-completion model, 2 threads: 1 476 of ~157 000 generated voxels differ between two identical calls,
    logits by up to 23, because pruning amplifies summation-order noise); with one thread the output is
    bit-identical. spconv's CPU kernels are single-threaded anyway, so this costs little. No effect on CUDA.

    Example:
        >>> with deterministic_threads("cpu"):
        ...     pass
    """
    if torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
