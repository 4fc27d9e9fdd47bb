"""Foveated segmentation (seed 000): the one training recipe, and evaluation.

The recipe is the ``foveation_wsi_segmentation`` bundle's ``configs/train.json``, a MONAI workflow:
``SupervisedTrainer`` (one image per step; :class:`LoadItemd`, ``RandFlipd`` and
:class:`~monai_fovea.transforms.RandFoveationCentersd` draw 16 locations of it, class-balanced on request;
:class:`FoveatedPrepareBatch` cuts the label region each location predicts; :class:`FoveatedLoss` puts MONAI/torch
losses on the segmenter's logits), Adam with weight decay and poly learning-rate decay (``PolynomialLR`` stepped
every iteration by ``LrScheduleHandler``), ``ValidationHandler`` → ``SupervisedEvaluator`` with
:class:`~monai_fovea.inferers.FoveatedInferer` and the paper's dataset-level IoU (:class:`DatasetMeanIoU`),
``CheckpointSaver`` (best by validation mean IoU, and last), ``StatsHandler``, ``TensorBoardStatsHandler`` and the
resume handler. :func:`train_foveation` runs that same config from Python on any data and network (the tutorial and
``benchmarks/foveation_accuracy.py`` use it), so the bundle, the tutorial and the benchmark train one way.

Data: a list of ``{"image": ..., "label": ...}`` dicts holding channel-first arrays/tensors or file paths (read
with MONAI's ``LoadImage``).

Example::

    from monai_fovea.apps.foveation import train_foveation
    history = train_foveation(model, train_items, val_items, num_classes=5, num_iterations=2000,
                              output_dir="runs/fov")
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.engines import PrepareBatch
from monai.transforms import MapTransform

from monai_fovea.inferers.foveated import FoveatedInferer
from monai_fovea.metrics import DatasetIoU
from monai_fovea.networks.foveated_segmenter import FoveatedSegmenter

__all__ = [
    "load_item",
    "LoadItemd",
    "FoveatedPrepareBatch",
    "FoveatedLoss",
    "DatasetMeanIoU",
    "find_unused_parameters",
    "recipe_config",
    "train_foveation",
    "evaluate_foveation",
]

#: modes whose forward leaves the foveation head unused (DDP must be told: ``find_unused_parameters``)
HEADLESS_MODES = ("fixed", "random", "average")


def load_item(
    item: dict, image_key: str = "image", label_key: str | None = "label"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Image ``[C, *S]`` (float32) and label ``[1, *S]`` (int64, or ``None``) of one data dict.

    Values may be arrays/tensors (channel-first) or paths, read with MONAI's ``LoadImage(ensure_channel_first=True)``.
    """
    from monai.transforms import LoadImage

    def _get(value, dtype):
        if isinstance(value, (str, os.PathLike)):
            value = LoadImage(image_only=True, ensure_channel_first=True)(str(value))
        t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
        t = t.as_tensor() if hasattr(t, "as_tensor") else t
        return t.to(dtype)

    if image_key not in item:
        raise KeyError(f"data item has no {image_key!r} (keys: {list(item)}).")
    image = _get(item[image_key], torch.float32)
    label = None
    if label_key is not None and label_key in item:
        label = _get(item[label_key], torch.int64)
        if label.ndim == image.ndim - 1:
            label = label[None]
        if tuple(label.shape[1:]) != tuple(image.shape[1:]):
            raise ValueError(f"label shape {tuple(label.shape)} does not match image shape {tuple(image.shape)}.")
    return image, label


@torch.no_grad()
def evaluate_foveation(
    model: FoveatedSegmenter,
    data: Sequence[dict],
    num_classes: int,
    exclude_classes: Sequence[int] = (),
    ignore_index: int | None = None,
    sw_batch_size: int = 32,
    overlap: float = 0.0,
    device: str | torch.device = "cpu",
    image_key: str = "image",
    label_key: str = "label",
) -> dict:
    """Dataset-level IoU (sum of intersections / sum of unions, as the paper) over ``data`` with
    :class:`FoveatedInferer`: ``{"iou": [K], "mean_iou": float, "accuracy": [K]}``."""
    was_training = model.training
    model.eval()
    metric = DatasetIoU(num_classes, exclude=exclude_classes, ignore_index=ignore_index)
    inferer = FoveatedInferer(sw_batch_size=sw_batch_size, overlap=overlap, return_apsm=False)
    for item in data:
        image, label = load_item(item, image_key, label_key)
        probs = inferer(image[None].to(device), model)
        metric(probs.argmax(1).cpu(), label[0][None])
    model.train(was_training)
    out = metric.aggregate()
    return {"iou": out["iou"].tolist(), "mean_iou": float(out["mean_iou"]), "accuracy": out["accuracy"].tolist()}


class LoadItemd(MapTransform):
    """:func:`load_item` as a dictionary transform: ``image`` → float32 ``[C, *S]``, ``label`` → int64 ``[1, *S]``
    (arrays, tensors or file paths).

    Example:
        >>> d = LoadItemd()({"image": np.zeros((1, 4, 6)), "label": np.ones((4, 6))})
        >>> d["image"].dtype, tuple(d["label"].shape)
        (torch.float32, (1, 4, 6))
    """

    def __init__(self, image_key: str = "image", label_key: str | None = "label") -> None:
        super().__init__([image_key] + ([label_key] if label_key else []))
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image, label = load_item(d, self.image_key, self.label_key)
        d[self.image_key] = image
        if label is not None:
            d[self.label_key] = label
        return d


class FoveatedPrepareBatch(PrepareBatch):
    """MONAI ``prepare_batch`` of the foveation step: ``(image [1, C, *S], target [N, *output_size], (centers,), {})``.

    The trainer then calls ``network(image, centers)`` (a :class:`FoveatedSegmenter`, or DDP around one) and the
    loss on ``(logits, weights)`` and ``target``: the label of the region each centre predicts (the smallest field
    of view, resampled to ``output_size`` by nearest neighbour; ``ignore_index`` outside the image). When the batch
    has a ``scale_target_key`` map (``[1, 1, *S]`` int, the per-location best fixed scale of
    :func:`monai_fovea.apps.foveation_oracle.scale_target_map`, -1 = no preference), ``target`` is
    ``(label patches, scale index [N] at each centre)`` for :class:`FoveatedLoss`'s prior term.

    Args:
        network: the segmenter (its ``target_patches`` gives the geometry; a DDP wrapper is unwrapped).
        ignore_index: label of pixels outside the image.
        centers_key: batch key of the ``[1, N, ndim]`` centres (from ``RandFoveationCentersd``).
        scale_target_key: batch key of the optional scale-target map.

    Raises:
        ValueError: a batch of more than one image (the recipe is one image per step, as the paper).

    Example:
        >>> prep = FoveatedPrepareBatch(net)  # doctest: +SKIP
        >>> image, target, (centers,), _ = prep({"image": img[None], "label": lab[None], "centers": c[None]})  # doctest: +SKIP
    """

    def __init__(self, network: torch.nn.Module, ignore_index: int = -100, centers_key: str = "centers",
                 scale_target_key: str = "scale_target") -> None:
        self.network = getattr(network, "module", network)
        self.ignore_index = int(ignore_index)
        self.centers_key = centers_key
        self.scale_target_key = scale_target_key

    def __call__(self, batchdata: Mapping[str, Any], device: str | torch.device | None = None,
                 non_blocking: bool = False, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        image = torch.as_tensor(batchdata["image"])
        if image.shape[0] != 1:
            raise ValueError(f"the foveation step takes one image per batch (batch_size 1), got {image.shape[0]}.")
        image = image.as_subclass(torch.Tensor).float().to(device=device, non_blocking=non_blocking)
        centers = torch.as_tensor(batchdata[self.centers_key])[0].to(device=device, non_blocking=non_blocking)
        label = torch.as_tensor(batchdata["label"]).as_subclass(torch.Tensor)[0].to(device=device, non_blocking=non_blocking)
        target = self.network.target_patches(label, centers, ignore_index=self.ignore_index)
        if batchdata.get(self.scale_target_key) is not None:
            smap = torch.as_tensor(batchdata[self.scale_target_key]).as_subclass(torch.Tensor)[0, 0]
            idx = torch.minimum(centers.long().clamp(min=0), torch.tensor(smap.shape, device=centers.device) - 1)
            scale = smap.to(centers.device)[tuple(idx.t())].long()
            return image, (target, scale), (centers,), {}
        return image, target, (centers,), {}


class FoveatedLoss(torch.nn.Module):
    """A loss on the logits of a :class:`FoveatedSegmenter`'s ``(logits, weights)`` output (MONAI's trainer passes
    the whole output as ``pred``), with two optional terms on the head's weights ``f`` at the locations:

    * ``entropy_weight * mean_i H(f_i)``: > 0 pushes the head towards confident choices, < 0 rewards spreading
      (exploration) — the authors' ``+w·H`` option;
    * ``prior_weight * mean_i -log f_i[t_i]``: the auxiliary prior towards the per-location best fixed scale
      ``t_i`` (``target = (labels, t)``, locations with ``t_i < 0`` left out); :class:`FoveationSchedule` decays
      its weight to 0.

    Both terms are skipped when the weights carry no gradient (the fixed / random / average baselines).

    Args:
        loss: any ``loss(logits [N, K, *S], target [N, *S])``; default ``CrossEntropyLoss(ignore_index=-100)``.
        entropy_weight: weight of the entropy term (either sign; 0 = off).
        prior_weight: weight of the prior term (0 = off; usually set by the schedule).

    Example:
        >>> loss = FoveatedLoss(torch.nn.CrossEntropyLoss())
        >>> round(float(loss((torch.zeros(2, 3, 4, 4), None), torch.zeros(2, 4, 4, dtype=torch.long))), 4)  # ln 3
        1.0986
        >>> f = torch.tensor([[0.5, 0.5], [0.5, 0.5]], requires_grad=True)
        >>> reg = FoveatedLoss(torch.nn.CrossEntropyLoss(), entropy_weight=1.0, prior_weight=1.0)
        >>> round(float(reg((torch.zeros(2, 3, 4, 4), f), (torch.zeros(2, 4, 4, dtype=torch.long),
        ...                                              torch.tensor([1, -1])))), 4)  # ln 3 + ln 2 + ln 2
        2.4849
    """

    def __init__(self, loss: Callable[..., torch.Tensor] | None = None, entropy_weight: float = 0.0,
                 prior_weight: float = 0.0) -> None:
        super().__init__()
        self.loss = loss if loss is not None else torch.nn.CrossEntropyLoss(ignore_index=-100)
        self.entropy_weight = float(entropy_weight)
        self.prior_weight = float(prior_weight)
        self._warned = False

    def forward(self, pred: Any, target: Any) -> torch.Tensor:
        logits, weights = (pred[0], pred[1]) if isinstance(pred, (tuple, list)) else (pred, None)
        labels, scale = (target[0], target[1]) if isinstance(target, (tuple, list)) else (target, None)
        out = self.loss(logits, labels)
        if weights is None or not weights.requires_grad:
            return out
        log_f = torch.log(weights.clamp_min(1e-12))
        if self.entropy_weight:
            out = out + self.entropy_weight * (-(weights * log_f).sum(1)).mean()
        if self.prior_weight and scale is None and not self._warned:
            self._warned = True
            warnings.warn(
                "FoveatedLoss: prior_weight > 0 but the batch has no scale targets, so the prior is off. Train the "
                "fixed-scale models first and pass their checkpoints (train.json: --prior_checkpoints; from Python: "
                "monai_fovea.apps.foveation_oracle.add_scale_targets), or set prior_weight 0.", stacklevel=2)
        if self.prior_weight and scale is not None:
            valid = scale >= 0
            if bool(valid.any()):
                out = out + self.prior_weight * torch.nn.functional.nll_loss(log_f[valid], scale[valid].long())
        return out


class DatasetMeanIoU(Metric):
    """Ignite metric: the paper's dataset-level mean IoU (Σ intersections / Σ unions over all images, per class,
    then the mean over classes not in ``exclude`` and not empty), summed over ranks under ``torch.distributed``.

    ``output_transform`` must give ``(pred, label)``: class-index maps (lists of ``[1, *S]`` or ``[*S]``, or batched
    tensors), e.g. ``monai.handlers.from_engine(["pred", "label"])`` after ``AsDiscreted(argmax=True)``.

    Example:
        >>> m = DatasetMeanIoU(2)
        >>> m.update(([torch.tensor([[0, 1]])], [torch.tensor([[0, 1]])]))
        >>> m.update(([torch.tensor([[1, 1]])], [torch.tensor([[0, 1]])]))
        >>> round(m.compute(), 4)
        0.5833
    """

    def __init__(self, num_classes: int, exclude: Sequence[int] = (), ignore_index: int | None = None,
                 output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        self.num_classes, self.exclude, self.ignore_index = int(num_classes), tuple(exclude), ignore_index
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._iou = DatasetIoU(self.num_classes, self.exclude, self.ignore_index)
        self.counts = self._iou.counts

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        preds, labels = output
        if not isinstance(preds, (list, tuple)):
            preds, labels = [preds], [labels]
        for p, t in zip(preds, labels):
            p, t = torch.as_tensor(p).detach().cpu(), torch.as_tensor(t).detach().cpu()
            self._iou(p.reshape(1, -1).long(), t.reshape(1, -1).long())
        self.counts = self._iou.counts

    @sync_all_reduce("counts")
    def compute(self) -> float:
        self._iou.counts = self.counts
        return float(self._iou.aggregate()["mean_iou"])


def find_unused_parameters(network: torch.nn.Module) -> bool:
    """Whether DDP must look for unused parameters: the segmenter's mode leaves its head unused
    (``fixed``, ``random``, ``average``).

    Example:
        >>> find_unused_parameters(FoveatedSegmenter(torch.nn.Conv2d(1, 2, 1), [8, 16], 8, spatial_dims=2,
        ...                                          in_channels=1, mode="fixed"))
        True
    """
    return getattr(getattr(network, "module", network), "mode", None) in HEADLESS_MODES


def recipe_config(multi_gpu: bool = False) -> list[str]:
    """The config files of the recipe: the ``foveation_wsi_segmentation`` bundle's ``train.json`` (and its
    ``multi_gpu_train.json`` with ``multi_gpu``).

    Example:
        >>> [Path(p).name for p in recipe_config(multi_gpu=True)]
        ['train.json', 'multi_gpu_train.json']
    """
    from monai_fovea.apps.bundles import bundle_root

    configs = Path(bundle_root("foveation_wsi_segmentation")) / "configs"
    return [str(configs / "train.json")] + ([str(configs / "multi_gpu_train.json")] if multi_gpu else [])


def train_foveation(
    model: FoveatedSegmenter,
    train_data: Sequence[dict],
    val_data: Sequence[dict] | None = None,
    num_classes: int | None = None,
    num_iterations: int = 1000,
    num_centers: int = 16,
    balanced: bool = False,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    poly_power: float = 0.9,
    flip: bool = True,
    ignore_index: int = 255,
    exclude_classes: Sequence[int] = (),
    val_interval: int = 0,
    sw_batch_size: int = 32,
    output_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    image_key: str = "image",
    label_key: str = "label",
    distributed: bool | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict:
    """Train the foveation head and the backbone of ``model`` jointly on ``train_data`` with the recipe of the
    ``foveation_wsi_segmentation`` bundle's ``configs/train.json`` (module docstring), run from Python.

    Args:
        model: the :class:`FoveatedSegmenter` (its ``mode`` selects foveation or a baseline); trained in place.
        train_data, val_data: lists of ``{"image", "label"}`` dicts (arrays/tensors or file paths).
        num_classes: classes, needed for validation.
        num_iterations: optimiser steps, one image each.
        num_centers: random locations per image and step (the paper uses 16).
        balanced: sample locations class-balanced (the paper's noted weakness with rare classes).
        lr, weight_decay, poly_power: Adam with L2 weight decay (as the authors); the learning rate decays as
            ``lr * (1 - t / T) ** poly_power`` (``PolynomialLR``, every iteration).
        flip: random horizontal flip (the authors' only augmentation).
        ignore_index: label value (and padding outside the image) left out of the loss.
        exclude_classes: classes left out of the validation mean IoU.
        val_interval: validate every this many steps (0: only at the end, when ``val_data`` is given); training
            runs in epochs of ``val_interval`` steps (of ``num_iterations`` when 0).
        output_dir: where ``model.pt`` (best validation mean IoU), ``model_last.pt`` (last), TensorBoard scalars
            (``tb/``) and the resume checkpoint (``resume/``: calling again with the same arguments continues a
            killed run) go; ``None``: a temporary folder, removed at the end.
        device: training device; seed: ``monai.utils.set_determinism`` seed (plus the rank under DDP).
        progress: show ignite's progress bar.
        distributed: data-parallel training over an initialised ``torch.distributed`` process group (default:
            whenever one is initialised). The bundle's ``multi_gpu_train.json`` is layered on: DDP (with
            ``find_unused_parameters`` in the modes that leave the head unused), ``DistributedSampler``, rank 0
            writes. The caller's process group is left as it is.
        overrides: any further config overrides, e.g. the options that make the head learn where to look
            (:mod:`monai_fovea.apps.foveation_schedule`): ``{"head_lr_scale": 10, "location_chunks": 16,
            "warmup_mode": "random", "warmup_iterations": 500, "entropy_weight": -0.01, "tau_start": 1.0,
            "tau_end": 0.1, "prior_weight": 1.0, "prior_iterations": 750}``. The prior needs ``"scale_target"``
            in the training items (:func:`monai_fovea.apps.foveation_oracle.add_scale_targets`).

    Returns:
        ``{"loss": [per step], "val": [(step, mean_iou)], "best_mean_iou": float | None, "last_val": dict | None}``
        (``last_val``: ``{"mean_iou": float, "step": int}``).

    Example:
        >>> history = train_foveation(model, items, num_iterations=100, balanced=True)  # doctest: +SKIP
    """
    import torch.distributed as dist
    from ignite.engine import Events
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    if len(train_data) == 0:
        raise ValueError("train_data is empty.")
    if val_data and num_classes is None:
        raise ValueError("num_classes is needed to validate (val_data was given).")
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    epoch_length = int(val_interval) if val_interval else int(num_iterations)
    tmp = tempfile.TemporaryDirectory() if output_dir is None else None
    out = Path(tmp.name if tmp is not None else output_dir)
    parser = ConfigParser()
    parser.read_config(recipe_config(multi_gpu=distributed))
    parser.read_meta(str(Path(recipe_config()[0]).with_name("metadata.json")))
    parser.update({
        "device": torch.device(device),
        "network_def": model,
        "num_classes": int(num_classes or 0),
        "train#datalist": [{"image": it[image_key], "label": it[label_key],
                            **({"scale_target": it["scale_target"]} if "scale_target" in it else {})} for it in train_data],
        "validate#datalist": [{"image": it[image_key], "label": it[label_key]} for it in (val_data or [])],
        "max_epochs": math.ceil(num_iterations / epoch_length), "epoch_length": epoch_length,
        "num_centers": num_centers, "balanced": bool(balanced), "ignore_index": int(ignore_index),
        "exclude_classes": list(exclude_classes),
        "learning_rate": lr, "weight_decay": weight_decay, "poly_power": poly_power,
        "flip_prob": [0.0, 0.5] if flip else [0.0, 0.0],
        "sw_batch_size": sw_batch_size,
        "model_dir": str(out), "output_dir": str(out / "tb"), "checkpoint_dir": str(out / "resume"),
        "seed": seed,
        "log_iterations": False,
        **dict(overrides or {}),
    })
    set_determinism(seed=seed + rank)
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    history: dict = {"loss": [], "val": [], "best_mean_iou": None, "last_val": None}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _loss(engine):
        history["loss"].append(float(engine.state.output["loss"].detach()))

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _val(engine):
        value = float(engine.state.metrics["val_mean_iou"])
        history["val"].append((trainer.state.iteration, value))
        history["last_val"] = {"mean_iou": value, "step": trainer.state.iteration}
        best = history["best_mean_iou"]
        if best is None or (not math.isnan(value) and value > best):
            history["best_mean_iou"] = value

    if progress and rank == 0:
        from ignite.handlers import ProgressBar

        ProgressBar(desc=f"train foveation ({model.mode})").attach(trainer)
    try:
        trainer.run()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return history
