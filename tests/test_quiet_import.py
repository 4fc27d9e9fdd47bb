"""Importing the package (and MONAI's transforms, which probe optional GPU codecs) prints no errors on a CPU machine.

The CPU install has no CUDA-only package (cuCIM and its nvImageCodec are in the ``gpu`` extra); with ``cucim-cu12``
installed on a machine without CUDA, ``import monai.transforms`` printed "Failed to load nvjpeg library" [ERROR]
lines. This test runs the imports in a fresh interpreter and fails on any such line.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

NOISE = ("[ERROR]", "Failed to load", "Traceback")


def test_imports_print_no_errors() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": ""}
    code = "import monai_fovea, monai.transforms, monai_fovea.networks, monai_fovea.data.readers; print('imported')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "imported"
    noisy = [line for line in (proc.stdout + proc.stderr).splitlines() if any(n in line for n in NOISE)]
    assert not noisy, "import printed errors:\n" + "\n".join(noisy)


def test_cpu_install_has_no_cuda_only_packages() -> None:
    """The CPU extras must not pull cuCIM / CuPy (the source of the nvjpeg noise) or NVIDIA CUDA wheels."""
    from importlib.metadata import distributions

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU machine: the `gpu` extra (cuCIM) and CUDA wheels belong there")

    names = {d.metadata["Name"].lower() for d in distributions()}
    cuda_only = sorted(n for n in names if n.startswith(("cucim", "cupy", "nvidia-")))
    assert not cuda_only, f"CUDA-only packages in the CPU environment: {cuda_only}"
