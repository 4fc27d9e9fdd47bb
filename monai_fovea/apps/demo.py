"""Run every bundle's inference configs on their bundled sample inputs: the README's "main job".

Usage::

    python -m monai_fovea.apps.demo                      # all bundles, outputs under ./outputs/<bundle>/
    python -m monai_fovea.apps.demo --bundles segment_then_segment --device cuda --output_dir /tmp/demo

Each bundle runs exactly as a user would run it, in its own process::

    python -m monai.bundle run --config_file bundles/<name>/configs/inference.json --output_dir ... --device ...

for ``inference.json`` and for each override file ``inference_<variant>.json`` layered on it (e.g.
``segment_then_segment``'s NIfTI variant: ``--config_file "['inference.json', 'inference_3d.json']"``; outputs under
``<output_dir>/<name><_variant>/``), and the files it wrote are listed at the end. A run that fails makes the demo
exit non-zero after the others ran.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from .bundles import BUNDLES_DIR, available_bundles

REPO_ROOT = BUNDLES_DIR.parent


def inference_configs(name: str, bundles_dir: Path = BUNDLES_DIR) -> list[list[Path]]:
    """The bundle's inference runs: ``[inference.json]``, then ``[inference.json, inference_<v>.json]`` for each
    override file (multi-GPU overrides excluded: they need ``torchrun``)."""
    folder = bundles_dir / name / "configs"
    base = folder / "inference.json"
    variants = sorted(p for p in folder.glob("inference_*.json"))
    return [[base]] + [[base, v] for v in variants]


def run_bundle_inference(name: str, output_dir: Path, device: str, configs: list[Path]) -> int:
    """Run one of the bundle's inference config stacks in a subprocess; returns its exit code."""
    config_arg = str(configs[0]) if len(configs) == 1 else repr([str(c) for c in configs])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg,
           "--output_dir", str(output_dir), "--device", device]
    print(f"\n=== {name}/{'+'.join(c.name for c in configs)}: {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, cwd=REPO_ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", nargs="*", default=None, help="bundle names (default: all)")
    parser.add_argument("--output_dir", default=str(Path.cwd() / "outputs"), help="where each bundle writes <dir>/<bundle>/")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device for inference")
    args = parser.parse_args(argv)

    names = args.bundles or available_bundles()
    unknown = sorted(set(names) - set(available_bundles()))
    if unknown:
        parser.error(f"--bundles: no bundle named {unknown}; available: {available_bundles()}")
    if not names:
        print("no bundle with configs/inference.json found under bundles/", file=sys.stderr)
        return 1
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    failed, summary = [], []
    for name in names:
        for configs in inference_configs(name):
            suffix = configs[-1].stem[len("inference"):]  # "" or e.g. "_3d"
            out = Path(args.output_dir) / f"{name}{suffix}"
            start = time.perf_counter()
            rc = run_bundle_inference(name, out, args.device, configs)
            elapsed = time.perf_counter() - start
            if rc != 0:
                failed.append(f"{name}{suffix}")
            files = sorted(p for p in out.rglob("*") if p.is_file()) if out.exists() else []
            summary.append((f"{name}{suffix}", rc, elapsed, files))
    print("\n=== summary")
    for name, rc, elapsed, files in summary:
        print(f"{name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {elapsed:.1f} s")
        for f in files:
            print(f"    {f}  ({f.stat().st_size / 1024:.0f} KiB)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
