"""Training and evaluation entry points for foveated segmentation (seed 000), used by the bundles and benchmarks.

The loop follows the authors' recipe: one image per step, a random subset of locations of its low-resolution map
(16 by default), the foveated patches of those locations through the segmenter, cross-entropy on the smallest-FoV
label region, head and backbone trained jointly with Adam, weight decay and poly learning-rate decay, random
horizontal flips. Data: a list of ``{"image": ..., "label": ...}`` dicts holding channel-first arrays/tensors or
file paths (read with MONAI's ``LoadImage``).

Example (a bundle's ``train.json`` can call it in an expression:
``"$monai_fovea.apps.foveation.train_foveation(...)"``)::

    from monai_fovea.apps.foveation import train_foveation
    history = train_foveation(model, train_items, val_items, num_classes=5, num_iterations=2000,
                              output_dir="runs/fov")
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from monai_fovea.data.io import save_state_dict
from monai_fovea.inferers.foveated import FoveatedInferer
from monai_fovea.metrics import DatasetIoU
from monai_fovea.networks.foveated_segmenter import FoveatedSegmenter
from monai_fovea.transforms.foveation.dictionary import RandFoveationCentersd

__all__ = ["load_item", "train_foveation", "evaluate_foveation"]


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
) -> dict:
    """Train the foveation head and the backbone of ``model`` jointly on ``train_data``.

    Args:
        model: the :class:`FoveatedSegmenter` (its ``mode`` selects foveation or a baseline).
        train_data, val_data: lists of ``{"image", "label"}`` dicts (arrays/tensors or file paths).
        num_classes: classes, needed for validation.
        num_iterations: optimiser steps, one image each.
        num_centers: random locations per image and step (the paper uses 16).
        balanced: sample locations class-balanced (the paper's noted weakness with rare classes).
        lr, weight_decay, poly_power: Adam with L2 weight decay (as the authors); the learning rate decays as
            ``lr * (1 - t / T) ** poly_power``.
        flip: random horizontal flip (the authors' only augmentation).
        ignore_index: label value (and padding outside the image) left out of the loss.
        exclude_classes: classes left out of the validation mean IoU.
        val_interval: validate every this many steps (0: only at the end, when ``val_data`` is given).
        output_dir: where ``model.pt`` (last), ``model_best.pt`` (best validation mean IoU) and TensorBoard
            scalars (``tb/``) go; nothing is written when ``None``.
        device: training device; seed: seeds torch, numpy and the location sampler.
        distributed: data-parallel training over an initialised ``torch.distributed`` process group (default:
            whenever one is initialised, e.g. under ``torchrun``; the gloo backend works on CPU). The model is
            wrapped in ``DistributedDataParallel``, each rank draws its images through a ``DistributedSampler``
            and its own location seed; only rank 0 validates and writes checkpoints and TensorBoard logs.

    Returns:
        ``{"loss": [per step], "val": [(step, mean_iou)], "best_mean_iou": float | None, "last_val": dict | None}``.
    """
    if len(train_data) == 0:
        raise ValueError("train_data is empty.")
    if val_data and num_classes is None:
        raise ValueError("num_classes is needed to validate (val_data was given).")
    import torch.distributed as dist
    from torch.utils.data.distributed import DistributedSampler

    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(seed)  # the same initial weights on every rank (DDP also broadcasts them)
    rng = np.random.default_rng(seed + rank)
    device = torch.device(device)
    model.to(device).train()
    net = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        # baselines leave the head unused (fixed / random / average): let DDP skip its gradients
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    image_sampler = DistributedSampler(range(len(train_data)), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    items = [load_item(it, image_key, label_key) for it in train_data]
    if any(lab is None for _, lab in items):
        raise ValueError(f"every training item needs a {label_key!r}.")
    sampler = RandFoveationCentersd(
        "image", stride=model.stride, num_centers=num_centers, label_key="label" if balanced else None,
        balanced=balanced, ignore_index=ignore_index,
    ).set_random_state(seed=seed + rank)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: max(0.0, 1.0 - it / num_iterations) ** poly_power
    )
    writer = None
    out_dir = Path(output_dir) if output_dir is not None else None
    if out_dir is not None and rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))
    history: dict = {"loss": [], "val": [], "best_mean_iou": None, "last_val": None}
    order: list[int] = []
    epoch = 0
    bar = tqdm(range(1, num_iterations + 1), desc=f"train foveation ({model.mode})", disable=not progress or rank > 0)
    for step in bar:
        if not order:
            image_sampler.set_epoch(epoch)
            order = list(image_sampler)[::-1]
            epoch += 1
        image, label = items[order.pop()]
        if flip and rng.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        centers = sampler({"image": image, "label": label})["centers"]
        image_d, label_d, centers_d = image.to(device), label.to(device), centers.to(device)
        logits, weights = net(image_d, centers_d)
        target = model.target_patches(label_d, centers_d, ignore_index=ignore_index)
        loss = F.cross_entropy(logits, target, ignore_index=ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        history["loss"].append(loss.item())
        if writer is not None:
            writer.add_scalar("train/loss", history["loss"][-1], step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            writer.add_scalar("train/apsm_mean", float(model.average_patch_size(weights.detach()).mean()), step)
        last = step == num_iterations
        if val_data and rank == 0 and ((val_interval and step % val_interval == 0) or last):
            res = evaluate_foveation(
                model, val_data, num_classes, exclude_classes, ignore_index, sw_batch_size, device=device,
                image_key=image_key, label_key=label_key,
            )
            history["val"].append((step, res["mean_iou"]))
            history["last_val"] = res
            if writer is not None:
                writer.add_scalar("val/mean_iou", res["mean_iou"], step)
            best = history["best_mean_iou"]
            if best is None or (not math.isnan(res["mean_iou"]) and res["mean_iou"] > best):
                history["best_mean_iou"] = res["mean_iou"]
                if out_dir is not None:
                    save_state_dict(model, out_dir / "model_best.pt")
    if out_dir is not None and rank == 0:
        save_state_dict(model, out_dir / "model.pt")
    if writer is not None:
        writer.close()
    return history
