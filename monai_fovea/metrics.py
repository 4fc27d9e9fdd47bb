"""Thin helpers over MONAI metrics, one section per strategy."""

from __future__ import annotations

import torch

# --- foveation ---
def confusion_counts(pred, target, num_classes: int, ignore_index: int | None = None) -> "torch.Tensor":
    """Per-image, per-class ``[B, K, 4]`` counts (TP, FP, TN, FN) of multi-class label maps, from MONAI's
    ``get_confusion_matrix`` on one-hot maps; pixels whose target is ``ignore_index`` count for no class.

    Args:
        pred: ``[B, 1, *S]`` or ``[B, *S]`` predicted class indices.
        target: the ground-truth class indices, same shape.
        num_classes: K.
        ignore_index: target value to leave out (e.g. 255, or outside-the-image padding).

    Example:
        >>> confusion_counts(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]]), 2)[0, :, [0, 1, 3]].tolist()
        [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    """
    from monai.metrics import get_confusion_matrix
    from monai.networks.utils import one_hot

    p = torch.as_tensor(pred).long()
    t = torch.as_tensor(target).long()
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}.")
    if p.ndim < 2:
        raise ValueError(f"pred must be [B, *S] or [B, 1, *S], got {tuple(p.shape)}.")
    if p.ndim < 3 or p.shape[1] != 1:
        p, t = p[:, None], t[:, None]
    valid = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    bad = valid & ((t < 0) | (t >= num_classes) | (p < 0) | (p >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"labels must lie in [0, num_classes={num_classes}) (or equal ignore_index={ignore_index}).")
    p = torch.where(valid, p, torch.zeros_like(p))
    t = torch.where(valid, t, torch.zeros_like(t))
    ph = one_hot(p, num_classes) * valid
    th = one_hot(t, num_classes) * valid
    return get_confusion_matrix(ph, th, include_background=True)


def _ratio(num: "torch.Tensor", den: "torch.Tensor") -> "torch.Tensor":
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.full_like(num, float("nan")))


def iou_per_class(
    pred, target, num_classes: int, ignore_index: int | None = None, reduction: str = "dataset"
) -> "torch.Tensor":
    """IoU per class: ``reduction="dataset"`` gives ``[K]`` = sum of intersections / sum of unions over all
    images (the paper's Gleason metric); ``"image"`` gives ``[B, K]`` per image. NaN where a class has an empty
    union.

    Example:
        >>> iou_per_class(torch.tensor([[0, 1, 1, 1]]), torch.tensor([[0, 1, 0, 1]]), 2).tolist()
        [0.5, 0.6666666865348816]
    """
    counts = confusion_counts(pred, target, num_classes, ignore_index)
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 3]
    if reduction == "dataset":
        return _ratio(tp.sum(0), (tp + fp + fn).sum(0))
    if reduction == "image":
        return _ratio(tp, tp + fp + fn)
    raise ValueError(f"reduction must be 'dataset' or 'image', got {reduction!r}.")


def mean_iou(
    pred, target, num_classes: int, exclude=(), ignore_index: int | None = None, reduction: str = "dataset"
) -> "torch.Tensor":
    """Mean over classes (leaving out ``exclude``, e.g. the paper drops Gleason grade 5) of :func:`iou_per_class`,
    ignoring classes with an empty union: a scalar (``"dataset"``) or ``[B]`` (``"image"``)."""
    iou = iou_per_class(pred, target, num_classes, ignore_index, reduction)
    keep = [k for k in range(num_classes) if k not in set(exclude)]
    return torch.nanmean(iou[..., keep], dim=-1)


def pixel_accuracy_per_class(
    pred, target, num_classes: int, ignore_index: int | None = None, reduction: str = "dataset"
) -> "torch.Tensor":
    """Per-class pixel accuracy TP / (TP + FN) (the Gleason2019 leaderboard's per-class accuracy): ``[K]`` over the
    data set or ``[B, K]`` per image; NaN for a class absent from the target."""
    counts = confusion_counts(pred, target, num_classes, ignore_index)
    tp, fn = counts[..., 0], counts[..., 3]
    if reduction == "dataset":
        return _ratio(tp.sum(0), (tp + fn).sum(0))
    if reduction == "image":
        return _ratio(tp, tp + fn)
    raise ValueError(f"reduction must be 'dataset' or 'image', got {reduction!r}.")


class DatasetIoU:
    """Accumulates confusion counts image by image (no need to hold all predictions) for dataset-level scores.

    Example:
        >>> m = DatasetIoU(num_classes=2)
        >>> m(torch.tensor([[0, 1]]), torch.tensor([[0, 1]])); m(torch.tensor([[1, 1]]), torch.tensor([[0, 1]]))
        >>> round(float(m.aggregate()["mean_iou"]), 4)
        0.5833
    """

    def __init__(self, num_classes: int, exclude=(), ignore_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.exclude = tuple(exclude)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.counts = torch.zeros(self.num_classes, 4, dtype=torch.float64)

    def __call__(self, pred, target) -> None:
        self.counts += confusion_counts(pred, target, self.num_classes, self.ignore_index).sum(0).double().cpu()

    def aggregate(self) -> dict[str, "torch.Tensor"]:
        """``{"iou": [K], "mean_iou": scalar (without excluded / empty classes), "accuracy": [K]}``."""
        tp, fp, fn = self.counts[:, 0], self.counts[:, 1], self.counts[:, 3]
        iou = _ratio(tp, tp + fp + fn)
        keep = [k for k in range(self.num_classes) if k not in set(self.exclude)]
        return {"iou": iou, "mean_iou": torch.nanmean(iou[keep]), "accuracy": _ratio(tp, tp + fn)}



# --- segment-then-segment ---
def segmentation_scores(pred, target) -> dict[str, "torch.Tensor"]:
    """Per-image binary scores of seed 001: DSC and IoU (both 1 when prediction and target are empty), precision
    (1 when nothing is predicted) and recall (1 when the target is empty).

    Args:
        pred: ``[B, 1, *S]`` binary prediction (anything > 0.5 is foreground).
        target: ``[B, 1, *S]`` binary ground truth (anything > 0 is foreground).

    Returns:
        ``{"dice", "iou", "precision", "recall"}`` → float tensors ``[B]``; average them over images for a data set.

    Example:
        >>> p = torch.tensor([[[1, 1, 0, 0]]]); t = torch.tensor([[[1, 0, 0, 0]]])
        >>> {k: round(float(v), 3) for k, v in segmentation_scores(p, t).items()}
        {'dice': 0.667, 'iou': 0.5, 'precision': 0.5, 'recall': 1.0}
    """
    from monai.metrics import compute_dice, compute_iou, get_confusion_matrix

    p = (torch.as_tensor(pred) > 0.5).float()
    t = (torch.as_tensor(target) > 0).float()
    if p.shape != t.shape or p.ndim < 3:
        raise ValueError(f"pred and target must both be [B, 1, *spatial], got {tuple(p.shape)} and {tuple(t.shape)}.")
    dice = compute_dice(p, t, include_background=True, ignore_empty=False)[:, 0]
    iou = compute_iou(p, t, include_background=True, ignore_empty=False)[:, 0]
    tp, fp, _, fn = get_confusion_matrix(p, t, include_background=True)[:, 0].unbind(-1)
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), torch.ones_like(tp))
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), torch.ones_like(tp))
    return {"dice": dice, "iou": iou, "precision": precision, "recall": recall}


# --- sparse ---
def defect_border_region(target, defective, distance: float = 10.0) -> "torch.Tensor":
    """Bool ``[B, 1, *S]``: voxels within ``distance`` voxels (Euclidean) of the defect border, i.e. of the implant
    voxels that touch the defective skull (26-neighbourhood) -- the zone where AutoImplant's border DSC is measured.

    Args:
        target: ``[B, 1, *S]`` ground-truth implant (> 0 is foreground).
        defective: ``[B, 1, *S]`` the defective skull given to the network (> 0 is foreground).
        distance: zone radius in voxels.
    """
    import numpy as np
    from scipy import ndimage

    t = torch.as_tensor(target).detach().cpu().numpy() > 0
    d = torch.as_tensor(defective).detach().cpu().numpy() > 0
    if t.shape != d.shape or t.ndim < 3:
        raise ValueError(f"target and defective must both be [B, 1, *spatial], got {t.shape} and {d.shape}.")
    out = np.zeros_like(t)
    for b in range(t.shape[0]):
        structure = np.ones((3,) * (t.ndim - 2), dtype=bool)
        border = t[b, 0] & ndimage.binary_dilation(d[b, 0], structure)
        if border.any():
            out[b, 0] = ndimage.distance_transform_edt(~border) <= distance
    return torch.from_numpy(out)


def implant_scores(pred, target, defective, border_distance: float = 10.0, spacing=None) -> dict[str, "torch.Tensor"]:
    """Skull-completion scores of seed 002 for binary implants: DSC, border DSC (DSC inside
    :func:`defect_border_region`) and HD95 (MONAI's ``compute_hausdorff_distance``, percentile 95; in ``spacing``
    units when given, else voxels).

    Args:
        pred: ``[B, 1, *S]`` predicted implant (> 0.5 is foreground).
        target: ``[B, 1, *S]`` ground-truth implant.
        defective: ``[B, 1, *S]`` the defective skull (defines the defect border).
        border_distance: border-zone radius in voxels.
        spacing: voxel spacing for HD95 (sequence, one per spatial axis) or None.

    Returns:
        ``{"dice", "border_dice", "hd95"}`` → float tensors ``[B]`` (DSC 1 when both are empty; HD95 inf/nan when one
        side is empty, as MONAI reports it).

    Example:
        >>> t = torch.zeros(1, 1, 4, 4, 4); t[0, 0, 1:3, 1:3, 1:3] = 1
        >>> d = torch.zeros_like(t); d[0, 0, 0] = 1
        >>> round(float(implant_scores(t, t, d)["dice"][0]), 3)
        1.0
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance

    p = (torch.as_tensor(pred) > 0.5).float()
    t = (torch.as_tensor(target) > 0).float()
    if p.shape != t.shape or p.ndim < 3:
        raise ValueError(f"pred and target must both be [B, 1, *spatial], got {tuple(p.shape)} and {tuple(t.shape)}.")
    zone = defect_border_region(t, defective, border_distance).to(p.device).float()
    dice = compute_dice(p, t, include_background=True, ignore_empty=False)[:, 0]
    border = compute_dice(p * zone, t * zone, include_background=True, ignore_empty=False)[:, 0]
    hd95 = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing)[:, 0]
    return {"dice": dice, "border_dice": border, "hd95": hd95}
