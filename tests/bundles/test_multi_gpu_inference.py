"""Cohort inference across ranks: ``torchrun --nproc_per_node=2`` with each bundle's ``multi_gpu_inference.json``
(gloo on CPU) processes every input exactly once and reports a failed file without stopping its rank."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_fovea.data.synthetic import small_objects

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "segment_then_segment" / "configs"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_write_each_output_exactly_once_and_report_a_bad_file(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        img, _ = small_objects((96, 96), num_objects=5, radius=(4.0, 7.0), seed=i)
        Image.fromarray((np.clip(img[0], 0, 1) * 200).astype(np.uint8)).save(src / f"cells{i}.png")
    (src / "zz_broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    configs = str([str(CONFIGS / "inference.json"), str(CONFIGS / "multi_gpu_inference.json")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "monai.bundle", "run", "--config_file", configs,
           "--input", str(src), "--output_dir", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0  # the rank that got the broken file exits 1, so torchrun does too
    written = re.findall(r"rank (\d): wrote (\S+)", text)
    masks = sorted(Path(p).name for _, p in written if p.endswith("_mask.png"))
    assert masks == [f"cells{i}_mask.png" for i in range(6)]  # every good input exactly once
    ranks = {Path(p).name: r for r, p in written}
    assert {ranks[f"cells{i}_mask.png"] for i in range(6)} == {"0", "1"}  # both ranks worked
    assert text.count(f"FAILED {src / 'zz_broken.png'}: ") == 1
    assert re.search(r"monai_fovea: rank \d: 1 of \d input\(s\) failed", text)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"cells{i}_mask.png" for i in range(6)]
                                                             + [f"cells{i}_boxes.json" for i in range(6)])
