"""What the skull-completion bundle's MONAI training workflow (``configs/train.json``) names beyond MONAI.

The workflow is MONAI's: ``SupervisedTrainer`` + ``ValidationHandler`` → ``SupervisedEvaluator``, ``CheckpointSaver``,
``StatsHandler``, ``TensorBoardStatsHandler``, ``LrScheduleHandler`` and the project's resume handler
(:mod:`monai_fovea.apps.training`). This module holds only what is specific to the method (seed 002):

* data: :func:`training_skulls` (the cleaned CT skull + synthetic shells), :class:`RandSkullChoiced` (the CT skull
  with probability ``real_fraction``, else a synthetic one), :class:`CompletionTargetd` (target = input shell +
  implant); the random defect itself is :class:`~monai_fovea.transforms.RandSkullDefectd`, the optional crop MONAI's
  ``RandCropByPosNegLabeld`` (around the defect, or around another skull voxel);
* the step: :func:`prepare_completion_batch` (dense shell → spconv tensor, target → voxel coordinates),
  :class:`CompletionLevels` (the network's target-guided multi-level forward, what DDP wraps) and
  :class:`MultiLevelOccupancyLoss` (the seed's sum of per-level BCEs), so MONAI's own iteration runs unchanged;
* validation / evaluation data: :func:`defect_datalist` (validation: the CT skull with defects
  :data:`VALIDATION_SEEDS`; evaluation: :func:`~monai_fovea.apps.sparse_completion.evaluation_cases`), and
  :class:`ImplantMetricsWriter` (per-case implant DSC, border DSC, HD95 → ``metrics.json``);
* :class:`SyncedTimeLimit`: ignite's ``TimeLimit`` that stops every rank of a DDP run at the same iteration.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

__all__ = [
    "VALIDATION_SEEDS",
    "training_skulls",
    "RandSkullChoiced",
    "CompletionTargetd",
    "SuperResInputd",
    "prepare_completion_batch",
    "CompletionLevels",
    "MultiLevelOccupancyLoss",
    "defect_datalist",
    "validation_datalist",
    "ImplantMetricsWriter",
    "SyncedTimeLimit",
]

logger = logging.getLogger(__name__)

#: defect seeds of the CT skull used for model choice (validation); evaluation uses ``EVAL_SEEDS`` (0..5)
VALIDATION_SEEDS = (10, 11, 12, 13)


def training_skulls(num_synthetic: int = 3, synthetic_seeds_from: int = 100,
                    synthetic_shape: Sequence[int] = (96, 96, 72)) -> list[np.ndarray]:
    """The training skulls: the cleaned ``ct_head`` skull first, then ``num_synthetic`` synthetic shells (seeds
    ``synthetic_seeds_from ...``; 100..102 for the shipped model), bool ``[X, Y, Z]``."""
    from monai_fovea.apps.sparse_completion import load_ct_skull, synthetic_skulls

    seeds = range(synthetic_seeds_from, synthetic_seeds_from + num_synthetic)
    return [load_ct_skull()[0]] + synthetic_skulls(seeds, synthetic_shape)


class RandSkullChoiced(Randomizable, MapTransform):
    """Put one training skull ``[1, X, Y, Z]`` (uint8) under ``key``: ``skulls[0]`` (the real one) with probability
    ``real_fraction``, else one of the others, uniformly.

    Args:
        skulls: bool/0-1 arrays ``[X, Y, Z]``, the real skull first.
        real_fraction: probability of ``skulls[0]``.
        key: output key.

    Example:
        >>> pick = RandSkullChoiced([np.ones((2, 2, 2)), np.zeros((3, 3, 3))], real_fraction=1.0)
        >>> pick.set_random_state(0)({})["complete"].shape
        (1, 2, 2, 2)
    """

    def __init__(self, skulls: Sequence[np.ndarray], real_fraction: float = 0.5, key: str = "complete") -> None:
        MapTransform.__init__(self, [key])
        if not skulls:
            raise ValueError("skulls is empty: give at least one training skull.")
        if not 0.0 <= real_fraction <= 1.0:
            raise ValueError(f"real_fraction must be in [0, 1], got {real_fraction}.")
        self.skulls = [np.asarray(s, dtype=bool) for s in skulls]
        self.real_fraction = float(real_fraction)
        self.key = key
        self._index = 0

    def randomize(self, data: Any = None) -> None:
        # like the previous loop's ``_pick_skull``: one uniform draw, then (for a synthetic skull) one integer
        if self.R.random_sample() < self.real_fraction or len(self.skulls) == 1:
            self._index = 0
        else:
            self._index = 1 + int(self.R.randint(len(self.skulls) - 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        d = dict(data)
        d[self.key] = self.skulls[self._index][None].astype(np.uint8)
        return d


class SuperResInputd(MapTransform):
    """Super-resolution pair from a full-resolution mask ``d[key]`` ``[1, *S]``: ``d["image"]`` = edge shell of
    :func:`~monai_fovea.apps.sparse_completion.superres_input` (the mask max-pooled by ``factor`` and upsampled back),
    ``d["label"]`` = the mask (uint8): the network refines the coarse occupancy to full resolution.

    Example:
        >>> m = np.zeros((1, 8, 8, 8), np.uint8); m[0, 2:5, 2:5, 2:5] = 1
        >>> d = SuperResInputd("complete", factor=2)({"complete": m})
        >>> int(d["label"].sum()), tuple(d["image"].shape)
        (27, (1, 8, 8, 8))
    """

    def __init__(self, key: str = "complete", factor: int = 2) -> None:
        super().__init__([key])
        self.key, self.factor = key, int(factor)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai_fovea.apps.sparse_completion import superres_input
        from monai_fovea.transforms import EdgeShell

        d = dict(data)
        mask = np.asarray(torch.as_tensor(d[self.key]).detach().cpu()[0] > 0)
        coarse = torch.from_numpy(superres_input(mask, self.factor)[None].astype(np.float32))
        d["image"] = EdgeShell()(coarse).float()
        d["label"] = torch.from_numpy(mask[None].astype(np.uint8))
        return d


class CompletionTargetd(MapTransform):
    """``d[output_key] = d[shell_key] | d[implant_key]`` (uint8 ``[1, *S]``): the generative target, the input
    shell plus the missing bone (natural openings of the skull stay open).

    Example:
        >>> shell = np.zeros((1, 3, 3, 3), np.uint8); shell[0, 0] = 1
        >>> implant = np.zeros_like(shell); implant[0, 2, 2, 2] = 1
        >>> int(CompletionTargetd()({"image": shell, "implant": implant})["label"].sum())
        10
    """

    def __init__(self, shell_key: str = "image", implant_key: str = "implant", output_key: str = "label") -> None:
        super().__init__([shell_key, implant_key])
        self.shell_key, self.implant_key, self.output_key = shell_key, implant_key, output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        shell = torch.as_tensor(np.asarray(d[self.shell_key]) if not torch.is_tensor(d[self.shell_key]) else d[self.shell_key])
        implant = torch.as_tensor(np.asarray(d[self.implant_key]) if not torch.is_tensor(d[self.implant_key]) else d[self.implant_key])
        d[self.output_key] = ((shell > 0) | (implant > 0)).to(torch.uint8)
        return d


def prepare_completion_batch(batchdata: Mapping[str, Any], device: str | torch.device | None = None,
                             non_blocking: bool = False, **kwargs: Any) -> tuple[Any, torch.Tensor, tuple, dict]:
    """MONAI ``prepare_batch`` of the completion step: ``(x, target, (target,), {})``.

    ``x`` is the spconv tensor of the input shell ``batchdata["image"]`` ``[B, 1, *S]``; ``target`` the int32
    coordinates ``[N, 1 + ndim]`` (batch index first) of ``batchdata["label"] > 0``, which the network also gets
    (its pruning keeps the target voxels in training) and the loss compares with.

    Example:
        >>> x, target, args, kw = prepare_completion_batch({"image": shell, "label": label})  # doctest: +SKIP
        >>> levels = CompletionLevels(model)(x, *args)  # doctest: +SKIP
    """
    from monai_fovea.networks.sparse_blocks import dense_to_spconv

    image = torch.as_tensor(batchdata["image"]).as_subclass(torch.Tensor).float()
    image = image.to(device=device, non_blocking=non_blocking)
    label = torch.as_tensor(batchdata["label"]).as_subclass(torch.Tensor)
    target = torch.nonzero(label[:, 0] > 0).int().contiguous().to(device=device, non_blocking=non_blocking)
    return dense_to_spconv(image), target, (target,), {}


class CompletionLevels(torch.nn.Module):
    """The training view of the bundle's network: ``forward(x, target)`` → every decoder level's occupancy logits,
    coarse to fine, with the target's voxels kept through pruning (``SparseCompletionNet.forward_levels``).

    It holds the bundle's ``SparseAsDense(SparseCompletionNet)`` (``model``), so the parameters trained are those
    saved in ``models/model.pt``; ``multi_gpu_train.json`` wraps this module in ``DistributedDataParallel``.

    Example:
        >>> levels = CompletionLevels(build_network())(x, target)  # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def net(self) -> torch.nn.Module:
        return getattr(self.model, "net", self.model)

    def forward(self, x: Any, target: torch.Tensor) -> list[Any]:
        return self.net.forward_levels(x, target)


class MultiLevelOccupancyLoss(torch.nn.Module):
    """The seed's loss: sum over decoder levels of BCE-with-logits, label = "the target has a voxel inside this
    cell" at that level's stride (identical to ``SparseCompletionNet.loss``).

    Args:
        num_levels: the network's stride-2 levels (``len(channels) - 1``); level ``j`` of the (coarse-to-fine)
            list has stride ``2 ** (num_levels - 1 - j)``.

    Example:
        >>> loss = MultiLevelOccupancyLoss(4)(CompletionLevels(model)(x, target), target)  # doctest: +SKIP
    """

    def __init__(self, num_levels: int) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}.")
        self.num_levels = int(num_levels)
        self.last_per_level: list[float] = []

    def forward(self, levels: Sequence[Any], target: torch.Tensor) -> torch.Tensor:
        from monai_fovea.networks import SparseCompletionNet

        per_level = []
        for j, out in enumerate(levels):
            stride = 2 ** (self.num_levels - 1 - j)
            shape = [int(s) for s in out.spatial_shape]
            labels = SparseCompletionNet.occupancy_labels(out.indices, target, stride, shape)
            per_level.append(torch.nn.functional.binary_cross_entropy_with_logits(out.features[:, 0], labels))
        self.last_per_level = [float(v.detach()) for v in per_level]
        return torch.stack(per_level).sum()


def defect_datalist(cases: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Defect cases (``make_defect_case`` / ``evaluation_cases`` dicts) → MONAI data items
    ``{"name", "defective": uint8 [1, *S], "label": uint8 [1, *S] (the implant)}``.

    Example:
        >>> from monai_fovea.apps.sparse_completion import make_defect_case
        >>> from monai_fovea.data.synthetic import skull_shell
        >>> item = defect_datalist([{"name": "a", **make_defect_case(skull_shell((32, 32, 24), seed=0) > 0, 0, (4, 6))}])[0]
        >>> sorted(item), item["label"].shape
        (['defective', 'label', 'name'], (1, 32, 32, 24))
    """
    return [{"name": str(c.get("name", i)), "defective": np.asarray(c["defective"], dtype=np.uint8)[None],
             "label": np.asarray(c["implant"], dtype=np.uint8)[None]} for i, c in enumerate(cases)]


def validation_datalist(seeds: Sequence[int] = VALIDATION_SEEDS) -> list[dict[str, Any]]:
    """The validation split: the cleaned CT skull with the defects of ``seeds`` (never drawn for evaluation), as
    :func:`defect_datalist` items named ``ct_head/defect<seed>``."""
    from monai_fovea.apps.sparse_completion import load_ct_skull, make_defect_case

    ct, _ = load_ct_skull()
    return defect_datalist([{"name": f"ct_head/defect{s}", **make_defect_case(ct, s)} for s in seeds])


class ImplantMetricsWriter:
    """Evaluator handler: implant DSC, border DSC (within ``border_distance`` voxels of the defect border) and HD95
    (mm with ``spacing``) per case, their means over all cases and per skull (the part of the case name before
    ``/``), written to ``output_dir/metrics.json`` at the end of the run and put into ``engine.state.metrics``
    (``implant_dice``, ``implant_border_dice``, ``implant_hd95``).

    Reads, per decollated item, ``pred`` (the implant after postprocessing), ``label`` (the true implant),
    ``defective`` and ``name`` from the evaluator's batch and output.

    metrics.json: ``{"cases": [{"name", "dice", "border_dice", "hd95"}, ...], "mean": {...}, "groups":
    {"ct_head": {...}, ...}}``.

    Example:
        >>> writer = ImplantMetricsWriter("eval")  # doctest: +SKIP
        >>> writer.attach(evaluator); evaluator.run()  # doctest: +SKIP
    """

    def __init__(self, output_dir: str | Path, spacing: Sequence[float] | None = None, border_distance: float = 10.0,
                 filename: str = "metrics.json") -> None:
        self.output_dir = Path(output_dir)
        self.spacing = None if spacing is None else [float(s) for s in spacing]
        self.border_distance = float(border_distance)
        self.filename = filename
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Any = None) -> None:
        self.rows = []

    def collect(self, engine: Any) -> None:
        from monai_fovea.metrics import implant_scores

        batch, output = engine.state.batch, engine.state.output
        items = zip(batch, output) if isinstance(output, list) else [(batch, output)]
        for b, o in items:
            pred = torch.as_tensor(o["pred"]).detach().cpu()[None]
            label = torch.as_tensor(o.get("label", b.get("label"))).detach().cpu()[None]
            defective = torch.as_tensor(b["defective"]).detach().cpu()[None]
            s = implant_scores(pred, label, defective, self.border_distance, self.spacing)
            name = b.get("name", str(len(self.rows)))
            self.rows.append({"name": name if isinstance(name, str) else str(name[0]),
                              **{k: float(v[0]) for k, v in s.items()}})

    @staticmethod
    def _means(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return {k: float(np.mean([r[k] for r in rows if math.isfinite(r[k])] or [float("nan")]))
                for k in ("dice", "border_dice", "hd95")}

    def write(self, engine: Any) -> None:
        groups: dict[str, list] = {}
        for r in self.rows:
            groups.setdefault(r["name"].split("/")[0], []).append(r)
        result = {"cases": self.rows, "mean": self._means(self.rows),
                  "groups": {g: self._means(rows) for g, rows in groups.items()}}
        engine.state.metrics.update({f"implant_{k}": v for k, v in result["mean"].items()})
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / self.filename).write_text(json.dumps(result, indent=2))
        logger.info("implant scores: %s", json.dumps(result["groups"]))


class SyncedTimeLimit:
    """Trainer handler: stop training after the iteration that crosses ``limit_sec`` (ignite's ``TimeLimit``); under
    ``torch.distributed`` the decision is all-reduced (MAX) at every iteration, so every rank stops at the same step
    (a rank that stopped alone would leave the others waiting in DDP's gradient all-reduce). ``None`` disables it.

    Example:
        >>> SyncedTimeLimit(330).attach(trainer)  # doctest: +SKIP
    """

    def __init__(self, limit_sec: float | None = None) -> None:
        self.limit_sec = None if limit_sec is None else float(limit_sec)
        self._start = time.monotonic()

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        if self.limit_sec is None:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)

    def _started(self, engine: Any) -> None:
        self._start = time.monotonic()

    def _check(self, engine: Any) -> None:
        import torch.distributed as dist

        up = time.monotonic() - self._start > self.limit_sec
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([int(up)], device=getattr(engine.state, "device", None) or "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            up = bool(flag.item())
        if up:
            logger.info("time limit %.0f s reached after %d iterations", self.limit_sec, engine.state.iteration)
            engine.terminate()
