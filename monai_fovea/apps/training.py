"""Shared pieces of the bundles' MONAI training workflows: resumable training and atomic checkpoints.

Every bundle's ``train.json`` is a MONAI ``SupervisedTrainer`` with ``ValidationHandler``, ``CheckpointSaver``,
``StatsHandler``, ``TensorBoardStatsHandler`` and ``LrScheduleHandler``. This module adds what MONAI lacks:

* :class:`ResumeCheckpoint` — a trainer handler that makes the same command resume a killed run: at every
  ``save_every_epochs``-th ``EPOCH_COMPLETED`` it writes (rank 0 only, atomically) one file holding the network
  (unwrapped from DDP), optimiser, LR scheduler, the trainer's ignite state (epoch, iteration), the random states of
  torch, NumPy, Python ``random`` and every MONAI ``Randomizable`` in the training data's transform chain (one set
  per rank), plus any other stateful object you list (e.g. the best-metric ``CheckpointSaver``); at ``STARTED`` every
  rank loads that file when it exists. A run killed mid-epoch restarts from its last completed epoch and ends with the
  same weights as an uninterrupted run (CPU, fixed seed; ``tests/apps/test_training.py``).
* :class:`RNGState` — the random states above as a stateful object (``state_dict``/``load_state_dict``).
* :class:`AtomicCheckpointSaver` — MONAI's ``CheckpointSaver`` writing through a temporary file and a rename, so a
  run killed while saving never leaves a truncated ``models/model.pt``. With ``save_dict={"model": net}`` and
  ``key_metric_filename="model.pt"`` the file is a plain state dict (what the bundles ship, read with
  ``weights_only=True``). MONAI's saver (via ignite's ``DiskSaver``) writes on rank 0 only.

Usage in a bundle's ``train.json`` (the exact lines; ``@network`` is what the trainer trains — the DDP wrapper in
``multi_gpu_train.json`` is fine, it is unwrapped — and ``@lr_scheduler`` may be left out when there is none)::

    "train_handlers": [
        {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": true},
        {"_target_": "ValidationHandler", "validator": "@evaluator", "epoch_level": true, "interval": 1},
        {"_target_": "StatsHandler", "tag_name": "train_loss", "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
        {"_target_": "monai_fovea.apps.training.ResumeCheckpoint",
         "checkpoint_dir": "@checkpoint_dir",
         "save_dict": {"network": "@network", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler",
                       "best_saver": "@best_saver", "validator": "@evaluator"}}
    ],
    "best_saver": {"_target_": "monai_fovea.apps.training.AtomicCheckpointSaver", "save_dir": "@model_dir",
                   "save_dict": {"model": "@network"}, "save_key_metric": true, "key_metric_filename": "model.pt"},
    "val_handlers": ["@best_saver", {"_target_": "StatsHandler", "iteration_log": false}]

``ResumeCheckpoint`` adds the trainer itself (``"trainer"``) and the random states (``"rng"``) on its own; the
transform chain is read from ``trainer.data_loader.dataset.transform`` unless ``transform=`` is given.
``"best_saver"`` (a MONAI ``CheckpointSaver`` with ``save_key_metric``) and ``"validator"`` (the evaluator:
``best_metric``/``best_metric_epoch``) are optional; list them so that the best-by-validation checkpoint is chosen
over the whole run, not only over the epochs after a restart. Start the training again with the same command to
resume; delete ``checkpoint_dir`` (or point it elsewhere) to start from scratch. A run that had already reached
``max_epochs`` does nothing more; raising ``max_epochs`` continues it.

The save runs after every other ``EPOCH_COMPLETED`` handler of the trainer (validation, LR step, best checkpoint),
whatever the order of ``train_handlers``: it is registered when the run starts. Under ``torch.distributed`` the
random states of all ranks are gathered (a collective: every rank must run the same epochs, which DDP does).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.handlers import CheckpointSaver
from monai.transforms import Randomizable, Transform

from monai_fovea.data.io import atomic_output

__all__ = [
    "ResumeCheckpoint", "RNGState", "AtomicCheckpointSaver", "randomizable_transforms", "unwrap_module", "load_weights",
    "is_rank_zero",
]

logger = logging.getLogger(__name__)


def unwrap_module(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (``module`` itself otherwise).

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> unwrap_module(net) is net
        True
    """
    if isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return module.module
    return module


def load_weights(module: torch.nn.Module, path: str | Path | None, strict: bool = True) -> torch.nn.Module:
    """Load a plain state dict file (``weights_only=True``) into ``module`` and return it; ``path=None``: unchanged.

    What a config needs to build a network from saved weights in one expression, e.g. the fine net initialised from
    the coarse one: ``"$monai_fovea.apps.training.load_weights(@network_def, @model_dir + '/coarse.pt')"``.

    Example:
        >>> net = load_weights(torch.nn.Linear(2, 1), None)
        >>> net.weight.shape
        torch.Size([1, 2])
    """
    if path is not None:
        unwrap_module(module).load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=strict)
    return module


def is_rank_zero() -> bool:
    """``True`` in the process that writes shared files: rank 0 of a process group, or the only process.

    Example:
        >>> is_rank_zero()
        True
    """
    return rank_and_world_size()[0] == 0


def randomizable_transforms(transform: Any, max_depth: int = 8) -> list[Randomizable]:
    """Every MONAI ``Randomizable`` reachable from ``transform`` (a ``Compose``, a single transform, a list), in a
    fixed order: composed transforms and the transforms a dictionary transform wraps (``RandAffined`` →
    ``RandAffine`` → ``RandAffineGrid``), each of which draws from its own ``RandomState``.

    Example:
        >>> from monai.transforms import Compose, RandFlipd, RandAffined
        >>> found = randomizable_transforms(Compose([RandFlipd("image", prob=0.5), RandAffined("image", prob=0.5)]))
        >>> [type(t).__name__ for t in found]
        ['Compose', 'RandFlipd', 'RandAffined', 'RandAffine', 'RandAffineGrid']
    """
    found: list[Randomizable] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if depth > max_depth or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            found.append(obj)
        if isinstance(obj, (list, tuple)):
            children: Any = obj
        elif isinstance(obj, dict):
            children = obj.values()
        elif isinstance(obj, (Transform, Randomizable)):
            children = [v for k, v in vars(obj).items() if k != "R"]
        else:
            return
        for child in children:
            visit(child, depth + 1)

    visit(transform, 0)
    return found


def _numpy_state(rs: np.random.RandomState) -> dict:
    """``RandomState`` state as tensors and numbers (loadable with ``torch.load(weights_only=True)``)."""
    st = rs.get_state(legacy=False)
    return {"key": torch.from_numpy(st["state"]["key"].astype(np.int64)), "pos": int(st["state"]["pos"]),
            "has_gauss": int(st["has_gauss"]), "gauss": float(st["gauss"])}


def _set_numpy_state(rs: np.random.RandomState, st: Mapping) -> None:
    rs.set_state({"bit_generator": "MT19937",
                  "state": {"key": np.asarray(st["key"], dtype=np.int64).astype(np.uint32), "pos": int(st["pos"])},
                  "has_gauss": int(st["has_gauss"]), "gauss": float(st["gauss"])})


class RNGState:
    """The random state of a training process as a stateful object: torch (CPU and, when present, the current CUDA
    device), NumPy's global generator, Python ``random``, and the ``RandomState`` of every MONAI ``Randomizable`` in
    ``transform`` (MONAI transforms do not draw from NumPy's global generator).

    Args:
        transform: the training transform chain (or ``None``: global generators only). Its random transforms are
            listed when the state is read or written, in the order of :func:`randomizable_transforms`.

    Example:
        >>> from monai.transforms import RandFlipd
        >>> flip = RandFlipd("x", prob=0.5)
        >>> rng = RNGState(flip)
        >>> state = rng.state_dict()
        >>> a = [flip.R.rand() for _ in range(3)] + [torch.rand(1).item()]
        >>> rng.load_state_dict(state)
        >>> a == [flip.R.rand() for _ in range(3)] + [torch.rand(1).item()]
        True
    """

    def __init__(self, transform: Any = None) -> None:
        self.transform = transform

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(np.random.mtrand._rand),
            "random": {"version": version, "internal": list(internal), "gauss": gauss},
            "transforms": [_numpy_state(t.R) for t in randomizable_transforms(self.transform)],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        transforms = randomizable_transforms(self.transform)
        if len(transforms) != len(state["transforms"]):
            raise ValueError(
                f"RNGState: the checkpoint holds the states of {len(state['transforms'])} random transforms, the "
                f"transform chain has {len(transforms)}; was the training transform changed since it was written?"
            )
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
        _set_numpy_state(np.random.mtrand._rand, state["numpy"])
        r = state["random"]
        random.setstate((r["version"], tuple(r["internal"]), r["gauss"]))
        for t, st in zip(transforms, state["transforms"]):
            _set_numpy_state(t.R, st)
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(torch.as_tensor(state["cuda"], dtype=torch.uint8).cpu())


class _SaverState:
    """State of a MONAI ``CheckpointSaver``'s best-metric list (which files hold which scores)."""

    def __init__(self, saver: CheckpointSaver) -> None:
        self.saver = saver

    def state_dict(self) -> dict[str, Any]:
        checkpoint = self.saver._key_metric_checkpoint
        saved = [] if checkpoint is None else checkpoint._saved
        return {"saved": [(float(priority), str(name)) for priority, name in saved]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        checkpoint = self.saver._key_metric_checkpoint
        if checkpoint is not None:  # ignite's Checkpoint state: "_saved" = [(priority, filename)]
            checkpoint.load_state_dict({"_saved": [tuple(item) for item in state["saved"]]})


class _EvaluatorState:
    """The best validation metric a MONAI evaluator has seen (``state.best_metric``, ``best_metric_epoch``)."""

    def __init__(self, evaluator: Any) -> None:
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, Any]:
        best = self.evaluator.state.best_metric
        return {"best_metric": float(best.item() if torch.is_tensor(best) else best),
                "best_metric_epoch": int(self.evaluator.state.best_metric_epoch)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]


class _MetricLoggerState:
    """A MONAI ``MetricLogger``'s history (loss per iteration, metrics per validation) as plain numbers."""

    def __init__(self, history: Any) -> None:
        self.history = history

    def state_dict(self) -> dict[str, Any]:
        def num(v: Any) -> float:
            return float(v.item() if torch.is_tensor(v) else v)

        return {"loss": [(int(i), num(v)) for i, v in self.history.loss],
                "metrics": {str(k): [(int(i), num(v)) for i, v in vals] for k, vals in self.history.metrics.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from monai.handlers.metric_logger import MetricLoggerKeys

        self.history.load_state_dict({MetricLoggerKeys.LOSS: [tuple(x) for x in state["loss"]],
                                      MetricLoggerKeys.METRICS: {k: [tuple(x) for x in v] for k, v in state["metrics"].items()}})


def _stateful(obj: Any) -> Any:
    """An object with ``state_dict``/``load_state_dict`` for ``obj`` (modules are unwrapped from DDP)."""
    from monai.engines import Workflow
    from monai.handlers import MetricLogger

    if isinstance(obj, torch.nn.Module):
        return unwrap_module(obj)
    if isinstance(obj, MetricLogger):
        return _MetricLoggerState(obj)
    if isinstance(obj, CheckpointSaver):
        return _SaverState(obj)
    if isinstance(obj, Workflow):
        return _EvaluatorState(obj)
    if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
        raise TypeError(f"ResumeCheckpoint: {type(obj).__name__} has no state_dict/load_state_dict.")
    return obj


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the current ``torch.distributed`` group, ``(0, 1)`` without one.

    Example:
        >>> rank_and_world_size()
        (0, 1)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumeCheckpoint:
    """Trainer handler: save everything a run needs to continue at each epoch end; load it when the run starts.

    Args:
        checkpoint_dir: folder of the resume file (created on first save).
        save_dict: ``{name: object}`` to save and restore: the network (DDP wrapper allowed), optimizer, LR scheduler,
            and optionally a best-metric MONAI ``CheckpointSaver``, the validation evaluator (module-level
            docstring) and a MONAI ``MetricLogger`` (loss and validation history). ``"trainer"`` and ``"rng"`` are added by the handler and must not be given.
        save_every_epochs: write the file every this many epochs (and never at other times).
        filename: name of the resume file in ``checkpoint_dir``.
        transform: the transform chain whose random states are saved; default: the trainer's
            ``data_loader.dataset.transform``.
        map_location: where tensors are loaded before being copied into the objects (default ``"cpu"``).

    Attributes:
        resumed_epoch: the epoch the last ``run()`` resumed from (``0``: started from scratch).

    Example:
        >>> resume = ResumeCheckpoint("runs/ckpt", {"network": net, "optimizer": opt})  # doctest: +SKIP
        >>> trainer = SupervisedTrainer(..., train_handlers=[..., resume])  # doctest: +SKIP
        >>> trainer.run()  # killed in epoch 7 of 10? the same command continues from the end of epoch 6  # doctest: +SKIP
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        save_dict: Mapping[str, Any],
        save_every_epochs: int = 1,
        filename: str = "resume.pt",
        transform: Any = None,
        map_location: str | torch.device = "cpu",
    ) -> None:
        if save_every_epochs < 1:
            raise ValueError(f"save_every_epochs must be >= 1, got {save_every_epochs}.")
        reserved = {"trainer", "rng"} & set(save_dict)
        if reserved:
            raise ValueError(f"save_dict: {sorted(reserved)} are added by ResumeCheckpoint; do not pass them.")
        self.path = Path(checkpoint_dir).expanduser() / filename
        self.save_dict = dict(save_dict)
        self.save_every_epochs = int(save_every_epochs)
        self.transform = transform
        self.map_location = map_location
        self.resumed_epoch = 0
        self._registered = False

    def attach(self, engine: Any) -> None:
        """Attach to a MONAI trainer (``SupervisedTrainer`` or any ignite engine with a ``data_loader``)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)

    def _objects(self, engine: Any) -> dict[str, Any]:
        transform = self.transform
        if transform is None:
            transform = getattr(getattr(getattr(engine, "data_loader", None), "dataset", None), "transform", None)
        return {**{k: _stateful(v) for k, v in self.save_dict.items()}, "trainer": engine, "rng": RNGState(transform)}

    def started(self, engine: Any) -> None:
        """Load the resume file when there is one; register the epoch-end save (after all other handlers)."""
        from ignite.engine import Events

        if not self._registered:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_every_epochs), self.save)
            self._registered = True
        if self.path.is_file():
            self.load(engine)

    def load(self, engine: Any) -> None:
        """Restore every object of ``save_dict``, the trainer's epoch/iteration and this rank's random states."""
        checkpoint = torch.load(self.path, map_location=self.map_location, weights_only=True)
        objects = self._objects(engine)
        missing = set(objects) - set(checkpoint)
        if missing:
            raise KeyError(f"ResumeCheckpoint: {self.path} has no {sorted(missing)}; it was written with another save_dict.")
        max_epochs = engine.state.max_epochs
        for name, obj in objects.items():
            if name == "rng":
                rank, world = rank_and_world_size()
                states = checkpoint["rng"]
                if len(states) != world:
                    logger.warning("%s was written by %d process(es), this run has %d: rank %d takes the random "
                                   "state of rank %d", self.path, len(states), world, rank, rank % len(states))
                obj.load_state_dict(states[rank % len(states)])
            elif name == "trainer":
                engine.load_state_dict(checkpoint["trainer"])
            else:
                obj.load_state_dict(checkpoint[name])
        if max_epochs is not None and engine.state.epoch > max_epochs:
            raise ValueError(f"ResumeCheckpoint: {self.path} is at epoch {engine.state.epoch}, beyond max_epochs = "
                             f"{max_epochs}; raise max_epochs or use another checkpoint_dir.")
        engine.state.max_epochs = max_epochs  # the command's max_epochs wins (a finished run can be extended)
        self.resumed_epoch = int(engine.state.epoch)
        logger.info("resumed from %s at epoch %d (iteration %d)", self.path, engine.state.epoch, engine.state.iteration)

    def save(self, engine: Any) -> None:
        """Write the resume file (rank 0; all ranks contribute their random state)."""
        objects = self._objects(engine)
        rng_state = objects.pop("rng").state_dict()
        rank, world = rank_and_world_size()
        if world > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rng_state)
            rng_states = gathered
        else:
            rng_states = [rng_state]
        if rank != 0:
            return
        checkpoint = {name: obj.state_dict() for name, obj in objects.items()}
        checkpoint["rng"] = rng_states
        with atomic_output(self.path) as tmp:
            torch.save(checkpoint, tmp)
        logger.info("saved %s at epoch %d", self.path, engine.state.epoch)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose files are written to a temporary name and renamed.

    Rank 0 writes (ignite's ``DiskSaver``). With one object in ``save_dict`` the file is that object's plain state
    dict (DDP wrapper removed), e.g. a bundle's ``models/model.pt``.

    Example:
        >>> saver = AtomicCheckpointSaver("models", {"model": net}, save_key_metric=True,
        ...                               key_metric_filename="model.pt")  # doctest: +SKIP
        >>> saver.attach(evaluator)  # best validation epoch -> models/model.pt  # doctest: +SKIP
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(save_dir, save_dict, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True
