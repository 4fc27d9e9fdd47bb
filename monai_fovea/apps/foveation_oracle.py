"""Per-location comparison of separately trained fixed-scale models: the **oracle** (the upper bound of choosing
one scale per location) and the **scale targets** of the foveation recipe's auxiliary prior.

A *location* is what the foveated segmenter predicts at once: the region of the smallest field of view around a
centre. For each location the loss of every fixed-scale model (a :class:`~monai_fovea.networks.FoveatedSegmenter`
in ``mode="fixed"`` with its own ``fixed_index``, trained alone) is the mean cross-entropy over the location's
labelled pixels (:func:`location_losses`).

* :func:`oracle_evaluate`: on each inference tile, the prediction of the model with the lowest loss there (chosen
  with the test labels — an upper bound, not a method), scored with the dataset-level IoU.
* :func:`scale_target_map`: on a training image, the index of the best model per cell of the head's grid, or -1
  where no model is better than the others by ``margin`` nats (no preference); the recipe's prior
  (``prior_weight`` in ``train.json``) supervises the head towards it with a weight that decays to 0.

Example::

    fixed = [trained_fixed_model_0, trained_fixed_model_1, trained_fixed_model_2]
    res = oracle_evaluate(fixed, test_items, num_classes=5)
    items = add_scale_targets(train_items, fixed)   # adds "scale_target" to every item
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from monai_fovea.inferers.foveated import accumulate_predictions, region_starts, scan_centers
from monai_fovea.metrics import DatasetIoU
from monai_fovea.networks.foveated_segmenter import FoveatedSegmenter
from monai_fovea.transforms.foveation.array import grid_centers

__all__ = ["location_losses", "scale_targets", "scale_target_map", "add_scale_targets", "fixed_scale_models",
           "oracle_evaluate"]


def _check_fixed(models: Sequence[FoveatedSegmenter]) -> None:
    if len(models) < 2:
        raise ValueError(f"need at least two fixed-scale models, got {len(models)}.")
    for d, m in enumerate(models):
        if m.mode != "fixed":
            raise ValueError(f"model {d} is in mode {m.mode!r}; the oracle compares fixed-scale models (mode 'fixed').")
        if m.patch_sizes != models[0].patch_sizes or m.output_size != models[0].output_size:
            raise ValueError(f"model {d} has other patch sizes / output size than model 0.")


@torch.no_grad()
def location_losses(
    models: Sequence[FoveatedSegmenter],
    image: torch.Tensor,
    label: torch.Tensor,
    centers: torch.Tensor,
    ignore_index: int = -100,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy ``[D, N]`` of each model's prediction of each centre's region (NaN where the region
    has no labelled pixel), and the logits ``[D, N, K, *output_size]``.

    Args:
        models: D fixed-scale segmenters (same geometry).
        image: ``[C, *S]``; label: ``[1, *S]`` or ``[*S]`` int.
        centers: ``[N, ndim]`` locations.
    """
    _check_fixed(models)
    target = models[0].target_patches(label, centers, ignore_index=ignore_index)
    losses, logits = [], []
    for m in models:
        was_training = m.training
        m.eval()
        out = torch.cat([m(image, centers[i : i + batch_size])[0] for i in range(0, len(centers), batch_size)])
        m.train(was_training)
        ce = F.cross_entropy(out, target, ignore_index=ignore_index, reduction="none")
        valid = (target != ignore_index).flatten(1)
        count = valid.sum(1)
        loss = (ce.flatten(1) * valid).sum(1) / count.clamp_min(1)
        losses.append(torch.where(count > 0, loss, torch.full_like(loss, float("nan"))))
        logits.append(out)
    return torch.stack(losses), torch.stack(logits)


def scale_targets(losses: torch.Tensor, margin: float = 0.05) -> torch.Tensor:
    """Best scale per location ``[N]`` (int64) from losses ``[D, N]``: the argmin where it beats every other scale
    by more than ``margin``, else -1 (no preference; also where the losses are NaN).

    Example:
        >>> scale_targets(torch.tensor([[0.1, 0.9, 0.30], [0.8, 0.2, 0.31]]), margin=0.05).tolist()
        [0, 1, -1]
    """
    if losses.ndim != 2 or losses.shape[0] < 2:
        raise ValueError(f"losses must be [D >= 2, N], got {tuple(losses.shape)}.")
    sorted_l, order = torch.sort(torch.nan_to_num(losses, nan=float("inf")), dim=0)
    best = order[0].clone()
    best[~(sorted_l[1] - sorted_l[0] > margin) | ~torch.isfinite(sorted_l[0])] = -1
    return best


def scale_target_map(
    models: Sequence[FoveatedSegmenter],
    image: torch.Tensor,
    label: torch.Tensor,
    margin: float = 0.05,
    ignore_index: int = -100,
) -> torch.Tensor:
    """The prior's target on one training image: ``[1, *S]`` int8 holding, on every pixel of each cell of the
    head's grid, the best fixed scale of the location centred in that cell (:func:`scale_targets`), -1 = none.

    Pixel resolution (not the grid's) so that the image's spatial augmentations (flips) can move it with the image
    and label; ``FoveatedPrepareBatch`` reads it at the sampled centres.
    """
    img = torch.as_tensor(image).float()
    spatial = tuple(img.shape[1:])
    centers, grid = grid_centers(spatial, models[0].stride)
    losses, _ = location_losses(models, img, torch.as_tensor(label), centers, ignore_index)
    best = scale_targets(losses, margin).reshape(grid).to(torch.int8)
    for axis, st in enumerate(models[0].stride):
        best = best.repeat_interleave(st, dim=axis)
    return best[tuple(slice(0, s) for s in spatial)][None].clone()


def fixed_scale_models(
    network: FoveatedSegmenter, checkpoints: Sequence[str | os.PathLike], device: str | torch.device = "cpu"
) -> list[FoveatedSegmenter]:
    """D copies of ``network`` in ``mode="fixed"``, copy ``d`` with ``fixed_index=d`` and the weights of
    ``checkpoints[d]`` (a ``CheckpointSaver`` file ``{"model": state_dict}`` or a bare state dict)."""
    if len(checkpoints) != network.num_scales:
        raise ValueError(f"need one checkpoint per scale ({network.num_scales}), got {len(checkpoints)}.")
    models = []
    for d, path in enumerate(checkpoints):
        m = copy.deepcopy(network).to(device)
        m.fixed_index = d
        m.mode = "fixed"
        state = torch.load(str(path), map_location=device, weights_only=True)
        m.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        models.append(m.eval())
    return models


def add_scale_targets(
    items: Sequence[dict],
    models: Sequence[FoveatedSegmenter],
    margin: float = 0.05,
    ignore_index: int = -100,
    image_key: str = "image",
    label_key: str = "label",
) -> list[dict]:
    """``items`` with ``"scale_target"`` (:func:`scale_target_map`) added to copies of each (the originals are not
    touched); no models → the items unchanged."""
    from monai_fovea.apps.foveation import load_item

    if not models:
        return list(items)
    out = []
    for it in items:
        image, label = load_item(it, image_key, label_key)
        if label is None:
            raise ValueError(f"item has no {label_key!r}: the scale targets need labels.")
        out.append({**it, "scale_target": scale_target_map(models, image, label, margin, ignore_index)})
    return out


@torch.no_grad()
def oracle_evaluate(
    models: Sequence[FoveatedSegmenter],
    data: Sequence[dict],
    num_classes: int,
    exclude_classes: Sequence[int] = (),
    ignore_index: int | None = None,
    image_key: str = "image",
    label_key: str = "label",
) -> dict[str, Any]:
    """Dataset-level IoU of the per-location oracle over ``data``: every non-overlapping inference tile (as
    :class:`~monai_fovea.inferers.FoveatedInferer` with ``overlap=0``) takes the prediction of the fixed-scale
    model with the lowest cross-entropy against the *test* label on that tile.

    Returns:
        ``{"iou": [K], "mean_iou": float, "accuracy": [K], "chosen": [D] (fraction of tiles per scale),
        "per_model_mean_iou": [D]}`` — the last from the same tiles, for a check against each fixed model alone.
    """
    from monai_fovea.apps.foveation import load_item

    _check_fixed(models)
    ref = models[0]
    region = ref.patch_sizes[0]
    metric = DatasetIoU(num_classes, exclude=exclude_classes, ignore_index=ignore_index)
    single = [DatasetIoU(num_classes, exclude=exclude_classes, ignore_index=ignore_index) for _ in models]
    chosen = torch.zeros(len(models), dtype=torch.int64)
    ig = -100 if ignore_index is None else int(ignore_index)
    for item in data:
        image, label = load_item(item, image_key, label_key)
        spatial = tuple(image.shape[1:])
        centers = scan_centers(spatial, region, 0.0)
        losses, logits = location_losses(models, image, label, centers, ig)
        best = torch.nan_to_num(losses, nan=float("inf")).argmin(0)  # unlabelled tiles: model 0
        chosen += torch.bincount(best, minlength=len(models))
        starts = region_starts(centers, region, ref.output_size)
        picks = [logits[best, torch.arange(len(centers))]] + [logits[d] for d in range(len(models))]
        for k, lg in enumerate(picks):
            probs = torch.softmax(lg, 1)
            if tuple(probs.shape[2:]) != tuple(region):
                mode = "bilinear" if probs.ndim == 4 else "trilinear"
                probs = F.interpolate(probs, size=tuple(region), mode=mode, align_corners=False)
            out = torch.zeros((probs.shape[1], *spatial))
            norm = torch.zeros((1, *spatial))
            accumulate_predictions(out, norm, probs, starts)
            pred = (out / norm.clamp_min(1e-12)).argmax(0)[None]
            (metric if k == 0 else single[k - 1])(pred, label)
    res = metric.aggregate()
    return {
        "iou": res["iou"].tolist(),
        "mean_iou": float(res["mean_iou"]),
        "accuracy": res["accuracy"].tolist(),
        "chosen": (chosen.double() / chosen.sum().clamp_min(1)).tolist(),
        "per_model_mean_iou": [float(s.aggregate()["mean_iou"]) for s in single],
    }
