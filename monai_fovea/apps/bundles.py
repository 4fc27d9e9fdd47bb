"""Where the project's MONAI bundles live, so their configs run from any working directory.

MONAI does not derive ``bundle_root`` from ``--config_file``; a config that says ``"bundle_root": "."`` only works
when run from inside the bundle. The configs therefore say::

    "bundle_root": "$monai_fovea.apps.bundles.bundle_root('segment_then_segment')"

and ``--bundle_root DIR`` on the command line still overrides it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLES_DIR", "bundle_root", "available_bundles"]

# bundles/ sits beside the package in a source checkout (the README installs with ``pip install -e``).
BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"


def bundle_root(name: str) -> str:
    """The folder of bundle ``name``: the current directory if it is that bundle, else ``bundles/<name>``.

    Example::

        >>> from monai_fovea.apps.bundles import bundle_root
        >>> bundle_root("segment_then_segment").endswith("bundles/segment_then_segment")
        True

    Raises:
        FileNotFoundError: no bundle of that name next to the package (e.g. a non-editable install).
    """
    cwd = Path.cwd()
    if cwd.name == name and (cwd / "configs").is_dir():
        return str(cwd)
    candidate = BUNDLES_DIR / name
    if (candidate / "configs").is_dir():
        return str(candidate)
    raise FileNotFoundError(f"bundle {name!r} not found in the current directory nor in {BUNDLES_DIR}; "
                            "run from the bundle's folder or pass --bundle_root DIR")


def available_bundles() -> list[str]:
    """Names of the bundles that have a ``configs/inference.json``."""
    return sorted(p.parent.parent.name for p in BUNDLES_DIR.glob("*/configs/inference.json"))
