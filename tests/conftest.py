"""Shared fixtures: the sample-data cache, the MONAI bundle meta schema, and running a bundle as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "bundles"
META_SCHEMA_NAME = "meta_schema_20240725.json"

# Two pytest-xdist workers share two cores: one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sample():
    """``sample(name) -> dict[str, Path]``: a real sample (fetched and cached by ``scripts/dev.sh``)."""
    from monai_fovea.data import samples

    return samples.fetch


@pytest.fixture(scope="session")
def meta_schema() -> Path:
    """The MONAI bundle metadata schema, for ``verify_metadata`` without network access.

    Looked up in ``$MONAI_FOVEA_META_SCHEMA``, then in ``../shared/monai/`` beside the checkout (CI and the
    developers' machines); ``verify_metadata`` would otherwise download it.
    """
    candidates = [os.environ.get("MONAI_FOVEA_META_SCHEMA", ""), REPO_ROOT.parent / "shared" / "monai" / META_SCHEMA_NAME]
    for cand in candidates:
        if cand and Path(cand).is_file():
            json.loads(Path(cand).read_text())  # must be valid JSON
            return Path(cand)
    pytest.skip(f"MONAI bundle meta schema {META_SCHEMA_NAME} not found offline (set MONAI_FOVEA_META_SCHEMA)")


@pytest.fixture(scope="session")
def run_bundle():
    """``run_bundle(name, config="inference.json", **overrides) -> CompletedProcess``.

    Runs ``python -m monai.bundle run --config_file bundles/<name>/configs/<config> --key value ...`` in a fresh
    process exactly as the bundle's README says, and fails with the captured output when it exits non-zero.
    """

    def _run(name: str, config: str | list[str] = "inference.json", timeout: float = 900, **overrides):
        configs = [config] if isinstance(config, str) else config
        files = [str(BUNDLES / name / "configs" / c) for c in configs]
        # MONAI takes several config files as a Python-style list string, not comma-separated.
        config_arg = files[0] if len(files) == 1 else repr(files)
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg]
        # no --bundle_root: the configs resolve their own folder, exactly as when a user runs the README command
        for key, value in overrides.items():
            cmd += [f"--{key}", str(value)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)
        if proc.returncode != 0:
            pytest.fail(f"bundle run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        return proc

    return _run
