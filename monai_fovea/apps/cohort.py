"""Cohort inference with MONAI's engine: one bad file never stops a batch, and every failure is reported.

A bundle's ``inference.json`` runs ``CohortEvaluator`` (a MONAI :class:`~monai.engines.SupervisedEvaluator`) over a
:class:`FailSafeDataset` built from :func:`monai_fovea.data.datalist.inference_datalist`:

* a file that cannot be read or preprocessed (corrupt, truncated, wrong content) becomes a *failed item* instead
  of an exception in the data loader;
* inference and postprocessing (which writes the outputs) run per batch inside a ``try``: a failure is recorded
  with the file name and the loop goes on;
* ``report()`` (the config's last ``run`` step) prints one line per failed file and exits with status 1 when any
  failed, so shell scripts and schedulers see it.

:func:`install_excepthook` makes any other bundle failure end with one line naming its root cause (MONAI wraps
every config error in "Failed to evaluate ConfigExpression", with the cause ~40 lines higher).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import Dataset, decollate_batch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import engine_apply_transform

__all__ = [
    "FailSafeDataset", "CohortEvaluator", "root_cause", "torch_device", "install_excepthook", "shard_for_rank", "flag", "FAILED_KEY",
]

logger = logging.getLogger(__name__)

#: key of a failed item's error message
FAILED_KEY = "failed"


def _is_wrapper(exc: BaseException) -> bool:
    """MONAI's context-only wrappers ("applying transform <...>", "Failed to evaluate ConfigExpression ...")."""
    return isinstance(exc, RuntimeError) and str(exc).startswith(("applying transform", "Failed to evaluate"))


def root_cause(exc: BaseException) -> str:
    """``"Type: message"`` of the first exception of ``exc``'s ``__cause__``/``__context__`` chain that is not one
    of MONAI's context-only wrappers, on one line (the outermost such error is the one that says most: it names
    the file when ours wrapped a reader's error).

    Example:
        >>> try:
        ...     try:
        ...         raise ValueError("bad header")
        ...     except ValueError as e:
        ...         raise RuntimeError("applying transform <LoadImaged>") from e
        ... except RuntimeError as e:
        ...     root_cause(e)
        'ValueError: bad header'
    """
    seen = set()
    while _is_wrapper(exc) and id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    message = _without_embedded_tracebacks(" ".join(str(exc).split()))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


_TRACEBACK = "Traceback (most recent call last):"


def _without_embedded_tracebacks(message: str) -> str:
    """MONAI's ``LoadImage`` packs every reader's full traceback into its message (hundreds of words); keep its
    first sentence and the error the first reader raised, e.g. ``"LoadImage cannot find a suitable reader for file:
    a.nii.gz (nibabel...ImageFileError: Cannot work out file type of "a.nii.gz")"``."""
    if _TRACEBACK not in message:
        return message
    head, first = message.split(_TRACEBACK)[:2]
    head = head.split(". Please install")[0].strip().rstrip(".")
    errors = list(re.finditer(r"([\w.]+(?:Error|Exception)): ", first))
    return f"{head} ({errors[-1].group(1)}: {first[errors[-1].end():].strip()})" if errors else head


class FailSafeDataset(Dataset):
    """A MONAI ``Dataset`` whose items that fail to load or transform become ``{"failed": "...", "source": path}``.

    Use with ``batch_size=1`` (a failed item cannot be collated with good ones).

    Example:
        >>> ds = FailSafeDataset([{"image": "broken.nii.gz"}], transform=LoadImaged("image"))  # doctest: +SKIP
        >>> ds[0]["failed"]  # doctest: +SKIP
        'EOFError: Compressed file ended before the end-of-stream marker was reached'
    """

    def __init__(self, data: Sequence, transform: Callable | None = None, source_key: str = "image") -> None:
        super().__init__(data, transform)
        self.source_key = source_key

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except Exception as exc:  # noqa: BLE001 - any failure of one file is reported, never fatal for the batch
            item = self.data[index]
            source = item.get(self.source_key, str(index)) if isinstance(item, dict) else str(item)
            return {FAILED_KEY: root_cause(exc), "source": str(source)}


def _sources(batch: Any, key: str) -> list[str]:
    if isinstance(batch, dict):
        if "source" in batch:
            return [str(s) for s in batch["source"]]
        img = batch.get(key)
        names = getattr(img, "meta", {}).get("filename_or_obj") if img is not None else None
        if names is not None:
            return [str(n) for n in (names if isinstance(names, (list, tuple)) else [names])]
    return ["<unknown input>"]


class CohortEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` for inference over a cohort of files: failures are recorded per file, not raised.

    Same arguments as MONAI's ``SupervisedEvaluator``; ``postprocessing`` (which writes the outputs) is applied
    per item inside the failure guard. After ``run()``: ``failures`` (``[(file, "Type: message")]``) and
    ``outputs`` (the postprocessed items' ``*_file`` entries). ``report()`` prints the summary and raises
    ``SystemExit(1)`` when any file failed.

    Example (the bundles' ``evaluator``):
        >>> ev = CohortEvaluator(device, val_data_loader=loader, network=net, inferer=inferer,
        ...                      postprocessing=post)  # doctest: +SKIP
        >>> ev.run(); ev.report()  # doctest: +SKIP
    """

    def __init__(self, *args: Any, postprocessing: Callable | None = None, source_key: str = "image", **kwargs: Any) -> None:
        # postprocessing decollates each batch itself (inside the failure guard); MONAI's own decollation at
        # MODEL_COMPLETED would only do the same work a second time
        kwargs.setdefault("decollate", False)
        super().__init__(*args, postprocessing=None, **kwargs)
        self.cohort_postprocessing = postprocessing
        self.source_key = source_key
        self.failures: list[tuple[str, str]] = []
        self.outputs: list[dict[str, str]] = []
        self.processed = 0

    def _iteration(self, engine: Any, batchdata: dict[str, Any]) -> dict:
        sources = _sources(batchdata, self.source_key)
        if isinstance(batchdata, dict) and FAILED_KEY in batchdata:
            for src, msg in zip(sources, batchdata[FAILED_KEY]):
                self._fail(src, msg)
            return {}
        try:
            output = super()._iteration(engine, batchdata)
            if self.cohort_postprocessing is not None:
                # MONAI's engine may have decollated already (decollate=True); either way: one item at a time
                items = output if isinstance(output, list) else decollate_batch(output, detach=True)
                for source, b, o in zip(sources, decollate_batch(batchdata, detach=True), items):
                    b, o = engine_apply_transform(b, o, self.cohort_postprocessing)
                    self.outputs.append({k: v for k, v in {**b, **o}.items() if str(k).endswith("_file")})
                    for path in self.outputs[-1].values():
                        logger.info("%s: wrote %s", source, path)
            self.processed += len(sources)
            return output
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the cohort
            for src in sources:
                self._fail(src, root_cause(exc))
            return {}

    def _fail(self, source: str, message: str) -> None:
        self.failures.append((source, message))
        logger.error("%s: %s", source, message)

    def _clean_output_dirs(self) -> None:
        """Remove this run's leftover temporaries (failed files) and output folders it left empty."""
        from pathlib import Path

        from monai_fovea.data.datalist import remove_stale_temporaries

        data = getattr(getattr(self.data_loader, "dataset", None), "data", [])
        for folder in {str(item["output_dir"]) for item in data if isinstance(item, dict) and "output_dir" in item}:
            remove_stale_temporaries(folder, include_own=True)
            path = Path(folder)
            # under torch.distributed another rank may be about to write into a folder that looks empty here
            if path.is_dir() and not any(path.iterdir()) and not _rank_prefix():
                path.rmdir()

    def report(self) -> dict[str, Any]:
        """Print what was written and one line per failed file; ``SystemExit(1)`` when any failed."""
        self._clean_output_dirs()
        total = self.processed + len(self.failures)
        written = [v for o in self.outputs for v in o.values()]
        rank = _rank_prefix()
        print(f"monai_fovea: {rank}{self.processed} of {total} input(s) done, {len(written)} file(s) written")
        for path in written:
            print(f"  {rank}wrote {path}")
        if self.failures:
            for source, message in self.failures:
                print(f"FAILED {source}: {message}", file=sys.stderr)
            raise SystemExit(f"monai_fovea: {rank}{len(self.failures)} of {total} input(s) failed (listed above)")
        return {"processed": self.processed, "written": written}


def _rank_prefix() -> str:
    from monai_fovea.apps.training import rank_and_world_size

    rank, world = rank_and_world_size()
    return f"rank {rank}: " if world > 1 else ""


def flag(value: bool | int | str) -> bool:
    """A config switch as a bool, however the command line spelled it.

    ``python -m monai.bundle run ... --overwrite false`` passes the *string* ``"false"`` (only ``False`` is a Python
    literal), which a plain ``if`` would take as true; the bundles' switches go through this.

    Raises:
        ValueError: a value that is not a yes/no.

    Example:
        >>> [flag(v) for v in (True, "false", "True", "yes", 0, "1")]
        [True, False, True, True, False, True]
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def torch_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, refusing a CUDA device that this torch cannot use with a message saying what to do.

    Example:
        >>> torch_device("cpu")
        device(type='cpu')
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise RuntimeError(
            f"--device {device}: torch {torch.__version__} ({build}) sees no CUDA GPU; run with --device cpu, "
            "or install the CUDA build of torch (README, GPU install)"
        )
    return dev


def install_excepthook() -> None:
    """Make an uncaught exception end with one line naming its root cause, after the usual traceback.

    Called from the bundles' ``initialize``; idempotent.
    """
    if getattr(sys.excepthook, "_monai_fovea", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):  # type: ignore[no-untyped-def]
        previous(exc_type, exc, tb)
        if exc is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            print(f"ERROR (monai_fovea): {root_cause(exc)}", file=sys.stderr)

    hook._monai_fovea = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def shard_for_rank(items: Sequence[Any]) -> list[Any]:
    """This rank's share of a cohort under ``torch.distributed`` (all of it without a process group).

    Rank 0's list is broadcast first, so every rank shards the same list even when a fast rank has already written
    outputs that a slower rank's own listing would skip; item ``i`` goes to rank ``i % world_size``, so each file is
    processed by exactly one rank.

    Example (the bundles' ``multi_gpu_inference.json``: ``"dataset#data": "$...shard_for_rank(@datalist)"``):
        >>> shard_for_rank([1, 2, 3])  # no process group: everything
        [1, 2, 3]
    """
    import torch.distributed as dist

    from monai_fovea.apps.training import rank_and_world_size

    rank, world = rank_and_world_size()
    if world == 1:
        return list(items)
    box = [list(items) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0][rank::world]
