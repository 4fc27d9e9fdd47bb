"""The data list of a bundle's inference run: which inputs, under which output names, and which to skip.

A bundle's ``dataset`` is built from ``inference_datalist(...)``: one item per input file, each carrying the
``stem`` its outputs are named after. Everything that can be decided before any file is read is decided here, so
that no output is ever written for a run that was going to overwrite itself:

* two inputs with the same stem (``x.png`` + ``x.tif``, ``s.nii`` + ``s.nii.gz``) get distinct stems (their full
  names with the dots replaced: ``x_png``, ``x_tif``); stems that would still collide are an error listing them;
* inputs whose outputs all exist already are skipped unless ``overwrite`` is asked for, so a re-run after a crash
  resumes a cohort;
* temporary files left in the output folder by a killed run (``.<stem>.tmp-<pid>-…``, see
  :func:`monai_fovea.data.io.atomic_output`) are removed when their process is gone.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from monai_fovea.data.io import file_stem, list_inputs

__all__ = ["inference_datalist", "remove_stale_temporaries", "NIFTI_SUFFIXES", "IMAGE_2D_SUFFIXES"]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_TMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, include_own: bool = False) -> list[Path]:
    """Remove the temporary outputs that a killed run left in ``folder`` (hidden ``.<stem>.tmp-<pid>-<hex>…`` files
    or folders whose process no longer exists; with ``include_own``, also this process's, once it has nothing in
    flight). Returns the removed paths.

    Example:
        >>> remove_stale_temporaries("outputs")  # doctest: +SKIP
        [PosixPath('outputs/.case01_mask.tmp-4242-0a1b2c3d.nii.gz')]
    """
    import shutil

    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TMP_PATTERN.match(entry.name)
        pid = int(m.group(1)) if m else -1
        if m and ((pid == os.getpid() and include_own) or (pid != os.getpid() and not _pid_alive(pid))):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run in %s", len(removed), folder)
    return removed


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    stems = [file_stem(p) for p in paths]
    counts = Counter(stems)
    stems = [s if counts[s] == 1 else p.name.replace(".", "_") for s, p in zip(stems, paths)]
    clashes = [s for s, n in Counter(stems).items() if n > 1]
    if clashes:
        names = [str(p) for p, s in zip(paths, stems) if s in clashes]
        raise ValueError(
            f"input: these files would write outputs with the same name ({', '.join(sorted(set(clashes)))}): "
            f"{names}. Rename them or run them into different --output_dir folders."
        )
    return stems


def inference_datalist(
    input: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    outputs: Sequence[str],
    suffixes: Sequence[str] | None = None,
    overwrite: bool = False,
    key: str = "image",
) -> list[dict[str, str]]:
    """Items ``{key: path, "stem": name, "output_dir": folder}`` for a bundle's inference run.

    Args:
        input: a file, a folder (its files), a glob pattern, or a list of those.
        output_dir: where the outputs go (created by the writers, not here); stale temporaries of a killed run
            are removed from it.
        outputs: the output file names of one input as templates with ``{stem}``, e.g.
            ``["{stem}_mask.nii.gz"]`` (``*`` allowed: ``"{stem}_mask.*"``); an input is skipped when all of
            them exist (unless ``overwrite``).
        suffixes: input suffixes to keep (see :func:`monai_fovea.data.io.list_inputs`).
        overwrite: recompute inputs whose outputs exist.
        key: the item key of the input path.

    Returns:
        The items to process, in input order (possibly empty when everything is done already).

    Raises:
        FileNotFoundError: nothing matches ``input``.
        ValueError: two inputs would write the same output name.

    Example:
        >>> inference_datalist("scans/", "out", ["{stem}_mask.nii.gz"], suffixes=[".nii.gz"])  # doctest: +SKIP
        [{'image': 'scans/a.nii.gz', 'stem': 'a', 'output_dir': 'out'}]
    """
    sources = [input] if isinstance(input, (str, os.PathLike)) else list(input)
    paths: list[Path] = []
    for src in sources:
        paths += [p for p in list_inputs(src, suffixes=suffixes) if p not in paths]
    stems = _unique_stems(paths)
    out = Path(output_dir).expanduser()  # created by the first writer: a run that writes nothing leaves no folder
    remove_stale_temporaries(out)
    items, skipped = [], []
    for path, stem in zip(paths, stems):
        done = all(any(out.glob(t.format(stem=glob.escape(stem)))) for t in outputs)
        if done and not overwrite:
            skipped.append(path)
            continue
        items.append({key: str(path), "stem": stem, "output_dir": str(out)})
    if skipped:
        logger.warning(
            "skipping %d of %d input(s) whose outputs exist in %s (pass --overwrite true to recompute): %s",
            len(skipped), len(paths), out, ", ".join(p.name for p in skipped),
        )
    return items
