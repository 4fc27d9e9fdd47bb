"""Segment-then-segment (seed 001): what the bundle's MONAI workflows name beyond MONAI.

Training is the bundle's ``configs/train.json``: two MONAI ``SupervisedTrainer``s (the coarse net on uniformly
downscaled tiles, then the fine net on ground-truth component crops), each validated by a ``SupervisedEvaluator``
(``ValidationHandler``) with MONAI's ``MeanDice``, best checkpoint by validation DSC, resumable
(:mod:`monai_fovea.apps.training`). This module holds the method-specific pieces those configs name: the data splits
(``sample_split``, ``aal_structures_split``), the training transforms (``coarse_train_transform``,
``fine_train_transform``), the coarse-only baseline as an inferer (``CoarseMaskInferer``), history/metrics writers,
``train`` (runs ``train.json`` on in-memory items: the recipe shared by bundle, benchmarks and tutorial) and
``evaluate`` (per-image scores in Python, for the benchmarks).

Data items are dicts ``{"image": [C, *S] float array in [0, 1], "label": [1, *S] mask}`` held in memory (the
sample images are small); 2D and 3D alike.

Sample split of the bundle (``sample_split``), no pixel in two parts:

* ``dsb2018_nuclei`` (512 × 512 fluorescence, 125 nuclei): train = top half (rows 0-255, random 256² windows),
  validation = bottom-left quadrant (rows 256-511, cols 0-255), test = bottom-right quadrant (cols 256-511).

3D split (``aal_structures_split``, the bundle's ``train_3d.json`` and ``benchmarks/sts_accuracy_3d.py``):

* ``mri_ch2`` T1 (181 × 217 × 181, 1 mm), AAL amygdala / pallidum / Heschl gyrus (labels 41, 42, 75, 76, 79, 80):
  the half with array x >= 91 (the even labels), cut to the box around the structures of both halves plus 8
  voxels (76 × 61 × 64), is split along its second axis (posterior → anterior) at index 44: train = slices 0-43,
  validation = slices 44-60 (scored there only, the rest of the half as unlabelled context); test = the other half
  (x < 90) mirrored along x, the whole box.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from monai.networks.nets import BasicUNet
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureTyped,
    RandAffined,
    RandFlipd,
    RandSpatialCropd,
    Resized,
    ScaleIntensityRangePercentiles,
)

from monai_fovea.inferers.segment_then_segment import SegmentThenSegmentInferer
from monai_fovea.metrics import segmentation_scores
from monai_fovea.transforms.boxes import RandComponentCropd

__all__ = [
    "build_unet",
    "normalize_intensity",
    "load_sample_items",
    "sample_split",
    "coarse_train_transform",
    "fine_train_transform",
    "repeat_items",
    "CoarseMaskInferer",
    "write_history",
    "write_metrics",
    "train",
    "evaluate",
    "AAL_STRUCTURES",
    "aal_structures_split",
    "AAL_VAL_START",
    "default_input_3d",
]


def build_unet(
    spatial_dims: int = 2, in_channels: int = 1, features: Sequence[int] = (8, 16, 32, 64, 128, 8)
) -> BasicUNet:
    """The U-Net used for both stages (MONAI ``BasicUNet``: 4 downsamplings as in the paper; tiny by default)."""
    return BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1, features=tuple(features))


def normalize_intensity(image: np.ndarray) -> np.ndarray:
    """Per-channel 1st-99.8th percentile → [0, 1] (the bundle's inference config applies the same MONAI transform)."""
    scale = ScaleIntensityRangePercentiles(1, 99.8, 0.0, 1.0, clip=True, channel_wise=True)
    return np.asarray(scale(image.astype(np.float32)))


def load_sample_items(name: str = "dsb2018_nuclei") -> list[dict[str, np.ndarray]]:
    """Whole sample images as items (``dsb2018_nuclei``: one 1-channel item; ``cellseg_he``: three RGB patches)."""
    import tifffile
    from PIL import Image

    from monai_fovea.data import samples

    files = samples.fetch(name)
    if name == "dsb2018_nuclei":
        image = tifffile.imread(files["image"]).astype(np.float32)[None]
        label = (tifffile.imread(files["label"]) > 0).astype(np.float32)[None]
        return [{"image": normalize_intensity(image), "label": label}]
    if name == "cellseg_he":
        items = []
        for i in (1, 2, 3):
            image = np.asarray(Image.open(files[f"image{i}"]).convert("RGB"), np.float32).transpose(2, 0, 1)
            label = (tifffile.imread(files[f"inst{i}"]) > 0).astype(np.float32)[None]
            items.append({"image": normalize_intensity(image), "label": label})
        return items
    raise ValueError(f"name must be 'dsb2018_nuclei' or 'cellseg_he', got {name!r}.")


def sample_split(name: str = "dsb2018_nuclei", part: str = "train") -> list[dict[str, np.ndarray]]:
    """Held-out split of a sample (no pixel in two parts).

    ``dsb2018_nuclei``: train = rows 0-255 (256 × 512), val = rows 256-511 × cols 0-255, test = rows 256-511 ×
    cols 256-511. ``cellseg_he``: train = patch 1, val = patch 2, test = patch 3 (whole 256² patches).
    """
    items = load_sample_items(name)
    if name == "dsb2018_nuclei":
        regions = {"train": (slice(0, 256), slice(0, 512)), "val": (slice(256, 512), slice(0, 256)),
                   "test": (slice(256, 512), slice(256, 512))}
        if part not in regions:
            raise ValueError(f"part must be one of {sorted(regions)}, got {part!r}.")
        r = (slice(None), *regions[part])
        return [{"image": items[0]["image"][r], "label": items[0]["label"][r]}]
    index = {"train": 0, "val": 1, "test": 2}
    if part not in index:
        raise ValueError(f"part must be one of {sorted(index)}, got {part!r}.")
    return [items[index[part]]]


def _augment(keys: Sequence[str], spatial_dims: int, size: Sequence[int]) -> list:
    """The paper's augmentation: shift/scale/rotate (p=0.5) and horizontal flip (p=0.3)."""
    rotate = (math.pi / 4,) if spatial_dims == 2 else (math.pi / 12,) * 3
    return [
        RandAffined(keys, prob=0.5, rotate_range=rotate, scale_range=(0.1,) * spatial_dims,
                    translate_range=tuple(0.0625 * s for s in size), mode=("bilinear", "nearest"),
                    padding_mode="reflection"),
        RandFlipd(keys, prob=0.3, spatial_axis=spatial_dims - 1),
    ]


def coarse_train_transform(coarse_size: Sequence[int], tile_size: Sequence[int]) -> Compose:
    """Random full-resolution window of ``tile_size``, augmentation, uniform downscale to ``coarse_size`` (area,
    as the inferer's ``downscale_image``; label: area fraction >= 0.5)."""
    nd = len(coarse_size)
    return Compose([
        EnsureTyped(["image", "label"], track_meta=False),
        RandSpatialCropd(["image", "label"], roi_size=tuple(tile_size), random_size=False),
        *_augment(["image", "label"], nd, tile_size),
        Resized(["image", "label"], spatial_size=tuple(coarse_size), mode="area"),
        AsDiscreted("label", threshold=0.5),
    ])


def fine_train_transform(fine_size: Sequence[int], max_shift: int = 16, margin: int | None = None) -> Compose:
    """One random ground-truth component crop (jittered, squared, padded; whole image when empty), augmented."""
    nd = len(fine_size)
    return Compose([
        EnsureTyped(["image", "label"], track_meta=False),
        RandComponentCropd(["image", "label"], "label", tuple(fine_size), margin=margin, max_shift=max_shift),
        *_augment(["image", "label"], nd, fine_size),
    ])


def _inferer(coarse_size, fine_size, device, **kwargs) -> SegmentThenSegmentInferer:
    return SegmentThenSegmentInferer(coarse_size, fine_size, sw_device=device, device=device, **kwargs)


def evaluate(
    items: list[dict],
    coarse_net: torch.nn.Module,
    fine_net: torch.nn.Module | None,
    coarse_size: int | Sequence[int],
    fine_size: int | Sequence[int],
    device: str | torch.device = "cpu",
    **inferer_kwargs,
) -> dict[str, dict[str, float]]:
    """Mean per-image DSC, IoU, precision and recall at full resolution of the coarse net alone (its probabilities
    upsampled) and, when ``fine_net`` is given, of segment-then-segment.

    Returns:
        ``{"coarse": {...}, "sts": {...}}``.

    Example:
        >>> evaluate(sample_split("dsb2018_nuclei", "test"), coarse, fine, 64, 64)["sts"]["dice"]  # doctest: +SKIP
        0.933
    """
    inferer = _inferer(coarse_size, fine_size, device, **inferer_kwargs)
    results: dict[str, list[dict]] = {"coarse": [], "sts": []}
    coarse_net.eval()
    if fine_net is not None:
        fine_net.eval()
    for item in items:
        image = torch.as_tensor(np.asarray(item["image"]), dtype=torch.float32)[None].to(device)
        label = torch.as_tensor(np.asarray(item["label"]))[None].to(device)
        results["coarse"].append(segmentation_scores(inferer.coarse_mask(image, coarse_net), label))
        if fine_net is not None:
            results["sts"].append(segmentation_scores(inferer(image, coarse_net, fine_net), label))
    return {
        method: {k: float(torch.cat([s[k] for s in scores]).mean()) for k in scores[0]}
        for method, scores in results.items()
        if scores
    }


# ---------------------------------------------------------------------------------------------------------------------
# What the bundle's MONAI training workflow (configs/train.json) names beyond MONAI


def repeat_items(items: Sequence[dict], samples_per_epoch: int) -> list[dict]:
    """``samples_per_epoch`` items cycling through ``items``: the training set of one epoch, each draw getting its own
    random crop from the training transform.

    Example:
        >>> [d["id"] for d in repeat_items([{"id": 0}, {"id": 1}], 5)]
        [0, 1, 0, 1, 0]
    """
    if samples_per_epoch < 1 or not items:
        raise ValueError(f"need items and samples_per_epoch >= 1, got {len(items)} items, {samples_per_epoch}.")
    return [items[i % len(items)] for i in range(samples_per_epoch)]


class CoarseMaskInferer(Inferer):
    """The coarse-only baseline as a MONAI inferer: ``inferer.coarse_mask(inputs, network)`` of a
    :class:`~monai_fovea.inferers.SegmentThenSegmentInferer` (the coarse net's probabilities on the downscaled
    image, upsampled to full resolution, thresholded), so a ``SupervisedEvaluator`` scores the coarse net alone at
    full resolution, the way segment-then-segment is scored.

    Example:
        >>> sts = SegmentThenSegmentInferer(coarse_size=None, coarse_scale=4, fine_size=16, coarse_min_side=8)
        >>> CoarseMaskInferer(sts)(torch.rand(1, 1, 64, 64), torch.nn.Conv2d(1, 1, 1)).shape
        torch.Size([1, 1, 64, 64])
    """

    def __init__(self, inferer: SegmentThenSegmentInferer) -> None:
        super().__init__()
        self.inferer = inferer

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        coarse = network.coarse if hasattr(network, "coarse") and hasattr(network, "fine") else network
        return self.inferer.coarse_mask(inputs, coarse)


def _per_epoch(values: list[tuple[int, float]], epoch_length: int) -> list[float]:
    by_epoch: dict[int, list[float]] = {}
    for iteration, value in values:
        by_epoch.setdefault((int(iteration) - 1) // epoch_length, []).append(float(value))
    return [float(np.mean(by_epoch[e])) for e in sorted(by_epoch)]


def write_history(path: str | Path, histories: dict[str, Any], epoch_lengths: dict[str, int],
                  key_metric: str = "val_dice") -> dict[str, dict[str, Any]]:
    """Write (rank 0, atomically) the training history of each stage from its MONAI ``MetricLogger``: mean loss per
    epoch, the key validation metric per validation, and the best one with its epoch (1-based, ``val_interval`` 1).

    Returns:
        ``{stage: {"loss": [...], "val_dice": [...], "best_val_dice": x, "best_epoch": e}}``.

    Example (the last step of ``train.json``'s ``run``):
        >>> write_history("models/train_history.json", {"coarse": logger}, {"coarse": 8})  # doctest: +SKIP
    """
    from monai_fovea.apps.training import is_rank_zero
    from monai_fovea.data.io import atomic_output

    out: dict[str, dict[str, Any]] = {}
    for stage, history in histories.items():
        vals = [float(v) for _, v in history.metrics.get(key_metric, [])]
        best = int(np.argmax(vals)) if vals else -1
        out[stage] = {"loss": _per_epoch(history.loss, epoch_lengths[stage]), key_metric: vals,
                      f"best_{key_metric}": vals[best] if vals else None, "best_epoch": best + 1 if vals else None}
    if is_rank_zero():
        with atomic_output(path) as tmp:
            Path(tmp).write_text(json.dumps(out, indent=1))
    return out


def write_metrics(path: str | Path, metrics: dict[str, dict[str, Any]], prefix: str = "val_") -> dict:
    """Write (rank 0, atomically) ``{"coarse": {...}, "sts": {...}}`` from the evaluators' ``state.metrics`` with the
    ``prefix`` removed from the names (``val_dice`` → ``dice``), and print it.

    Example (``evaluate.json``):
        >>> write_metrics("eval/metrics.json", {"sts": {"val_dice": 0.93}})  # doctest: +SKIP
        {'sts': {'dice': 0.93}}
    """
    from monai_fovea.apps.training import is_rank_zero
    from monai_fovea.data.io import atomic_output

    out = {stage: {k.removeprefix(prefix): float(v) for k, v in m.items()}
           for stage, m in metrics.items()}
    if is_rank_zero():
        with atomic_output(path) as tmp:
            Path(tmp).write_text(json.dumps(out, indent=1))
        print(json.dumps(out, indent=1))
    return out


def train(
    train_items: list[dict],
    val_items: list[dict],
    model_dir: str | Path,
    config: str | Sequence[str] = "train.json",
    network_fn: Callable[[], torch.nn.Module] | None = None,
    loss_fn: Callable | None = None,
    lr: float | None = None,
    progress: bool | None = None,
    **overrides: Any,
) -> dict:
    """Run the bundle's MONAI training workflow (``bundles/segment_then_segment/configs/train.json``: the one recipe of
    the bundle, the benchmarks and the tutorial) on in-memory items.

    Args:
        train_items / val_items: ``[{"image": [C, *S], "label": [1, *S]}]`` arrays.
        model_dir: where ``coarse.pt`` and ``model.pt`` (best epochs by validation DSC, plain state dicts) and
            ``train_history.json`` go. Resume checkpoints and TensorBoard logs go to ``model_dir/runs`` unless
            ``output_dir`` is given: a second call with the same folders resumes (and trains nothing more when the
            first one finished).
        config: config file name(s) in the bundle's ``configs/`` (e.g. ``["train.json", "train_3d.json"]``).
        network_fn: builds the network of both stages (default: the config's ``network_def``).
        loss_fn: the loss (default: the config's soft Dice).
        lr: the learning rate (config key ``learning_rate``).
        progress: ignored (MONAI's ``StatsHandler`` logs each iteration); kept for older callers.
        overrides: any other config key: ``coarse_size``, ``fine_size``, ``tile_size`` (an int is repeated over
            ``spatial_dims``), ``spatial_dims``, ``in_channels``, ``features``, ``coarse_epochs``, ``fine_epochs``,
            ``samples_per_epoch``, ``batch_size``, ``device``, ``init_fine_from_coarse``, ``seed``…

    Returns:
        the history written to ``train_history.json``: per stage the loss per epoch, the validation DSC per epoch and
        the best one (``best_val_dice``, ``best_epoch``).

    Example:
        >>> train(sample_split("dsb2018_nuclei", "train"), sample_split("dsb2018_nuclei", "val"), "models",
        ...       coarse_epochs=2, fine_epochs=2)["fine"]["best_val_dice"]  # doctest: +SKIP
        0.71
    """
    from monai.bundle import ConfigParser
    from monai.utils import ensure_tuple_rep

    from monai_fovea.apps.bundles import bundle_root

    configs = [config] if isinstance(config, str) else list(config)
    parser = ConfigParser()
    parser.read_config([str(Path(bundle_root("segment_then_segment")) / "configs" / c) for c in configs])
    if lr is not None:
        overrides["learning_rate"] = lr
    dims = int(overrides.get("spatial_dims", parser["spatial_dims"]))
    for key in ("coarse_size", "fine_size", "tile_size"):
        if key in overrides:
            overrides[key] = [int(v) for v in ensure_tuple_rep(overrides[key], dims)]
    overrides.setdefault("output_dir", str(Path(model_dir) / "runs"))
    parser["train_items"] = train_items
    parser["val_items"] = val_items
    parser["model_dir"] = str(model_dir)
    for key, value in overrides.items():
        parser[key] = value
    if network_fn is not None:
        for key in ("coarse_def", "coarse_selected_def", "network_def"):
            parser[key] = network_fn()
    if loss_fn is not None:
        parser["loss"] = loss_fn
    parser.parse(reset=True)
    for section in ("initialize", "run", "finalize"):
        for i in range(len(parser[section])):
            parser.get_parsed_content(f"{section}#{i}")
    return json.loads((Path(model_dir) / parser["history_name"]).read_text())


# ---------------------------------------------------------------------------------------------------------------------
# 3D: AAL small structures on the mri_ch2 T1 (data of train_3d.json / benchmarks/sts_accuracy_3d.py), NIfTI inference

AAL_STRUCTURES = (41, 42, 75, 76, 79, 80)  # amygdala, pallidum, Heschl gyrus (AAL: odd = left, even = right)
_AAL_MARGIN = 8


def _aal_halves() -> dict[str, dict]:
    """Both halves of the ``mri_ch2`` AAL task: per part the item (image normalised on the whole head, as in the
    benchmark), the raw T1 crop, and the crop's voxel-to-world affine (mirroring included)."""
    import nibabel as nib

    from monai_fovea.data import samples

    files = samples.fetch("mri_ch2")
    nii = nib.load(files["image"])
    raw = np.asarray(nii.dataobj, np.float32)[None]
    aal = np.asarray(nib.load(files["aal"]).dataobj)
    label = np.isin(aal, AAL_STRUCTURES).astype(np.float32)[None]
    image = normalize_intensity(raw)
    left = {"image": image[:, 91:], "label": label[:, 91:], "raw": raw[:, 91:]}
    right = {k: v[:, :90][:, ::-1].copy() for k, v in (("image", image), ("label", label), ("raw", raw))}
    # one fixed field of view for both halves: the box around the structures of both, plus _AAL_MARGIN voxels
    union = (left["label"][0] > 0) | (right["label"][0] > 0)
    idx = np.nonzero(union)
    starts = [max(int(i.min()) - _AAL_MARGIN, 0) for i in idx]
    roi = (slice(None), *[slice(st, min(int(i.max()) + 1 + _AAL_MARGIN, n))
                          for st, i, n in zip(starts, idx, union.shape)])
    # crop voxel (i, j, k) -> original voxel: left (91 + x0 + i, y0 + j, z0 + k), right (89 - x0 - i, y0 + j, z0 + k)
    to_left = np.eye(4)
    to_left[:3, 3] = [91 + starts[0], starts[1], starts[2]]
    to_right = np.eye(4)
    to_right[0, 0] = -1.0
    to_right[:3, 3] = [89 - starts[0], starts[1], starts[2]]
    out = {}
    for part, half, to_orig in (("train", left, to_left), ("test", right, to_right)):
        out[part] = {"item": {k: half[k][roi].copy() for k in ("image", "label")}, "raw": half["raw"][roi][0].copy(),
                     "affine": np.asarray(nii.affine, np.float64) @ to_orig}
    return out


AAL_VAL_START = 44  # second-axis index of the crop where the validation slab of the training half begins


def aal_structures_split(part: str = "train") -> list[dict[str, np.ndarray]]:
    """Held-out 3D split of the ``mri_ch2`` T1 for the union of the AAL amygdala, pallidum and Heschl gyrus.

    Both hemispheres are cut to the same field of view, the box around the six structures of both halves plus 8
    voxels (76 × 61 × 64); the image is normalised on the whole head (1st-99.8th percentile) before cutting.

    * ``train``: the half with array x >= 91 (RAS x > 0, AAL's even labels 42, 76, 80), second-axis (posterior →
      anterior) slices 0-43 of the box (76 × 44 × 64): all of Heschl's gyrus, 80 % of the amygdala, 70 % of the
      pallidum (5051 structure voxels);
    * ``val``: the same half, scored on slices 44-60 only: the anterior 20 % of the amygdala and 30 % of the
      pallidum (1038 voxels). The item is the whole half (so the coarse net sees the volume it is made for, not a
      17-slice sliver) with ``label`` zero on slices 0-43 and ``score_mask`` = 1 on slices 44-60: a validation that
      masks ``pred`` and ``label`` with ``score_mask`` (``MaskIntensityd``, as ``train_3d.json`` does) scores no
      training voxel; the training slices are unlabelled context there;
    * ``test``: the other half (array x < 90, the odd labels) mirrored along x so that it looks like the first,
      the whole box;
    * ``train_full``: the whole first half with all its labels (76 × 61 × 64; what
      ``benchmarks/sts_accuracy_3d.py`` trains and selects checkpoints on, as recorded in ``docs/BENCHMARKS.md``).

    Rule: one planar cut of the training half at slice ``AAL_VAL_START`` = 44; no labelled voxel is in two parts.

    Returns:
        ``[{"image": [1, X, Y, Z] float32 in [0, 1], "label": [1, X, Y, Z] float32 0/1}]`` (``val``: also
        ``"score_mask"``).

    Example:
        >>> [aal_structures_split(p)[0]["image"].shape for p in ("train", "val", "test")]  # doctest: +SKIP
        [(1, 76, 44, 64), (1, 76, 61, 64), (1, 76, 61, 64)]
    """
    if part not in ("train", "val", "test", "train_full"):
        raise ValueError(f"part must be 'train', 'val', 'test' or 'train_full', got {part!r}.")
    halves = _aal_halves()
    if part in ("test", "train_full"):
        return [halves["test" if part == "test" else "train"]["item"]]
    item = halves["train"]["item"]
    if part == "train":
        return [{k: v[:, :, :AAL_VAL_START].copy() for k, v in item.items()}]
    score = np.zeros_like(item["label"])
    score[:, :, AAL_VAL_START:] = 1.0
    return [{"image": item["image"].copy(), "label": item["label"] * score, "score_mask": score}]


def default_input_3d(cache_dir: str | Path | None = None) -> str:
    """Path of the 3D bundle's default input: the held-out T1 crop of ``aal_structures_split("test")`` (the left
    hemisphere — RAS x < 0, AAL's odd labels — mirrored into a right one, raw intensities), written once (with its ground-truth mask beside it,
    ``*_label.nii.gz``) into ``cache_dir`` (default: the sample data folder's ``segment_then_segment/``).

    Its affine is that of the mirror image (the left hemisphere's voxel positions reflected about the
    mid-sagittal plane x = 0), so it is stored in the training frame (RAS, 1 mm) like the training half: a model
    that brings its inputs into that frame sees what a right hemisphere looks like. (Earlier documents called the
    training half "left"; with this T1's affine, array x >= 91 is RAS x > 0, the right hemisphere, where AAL puts
    its even, right-hemisphere labels.)

    Example:
        >>> default_input_3d()  # doctest: +SKIP
        '/home/me/.cache/monai_fovea/segment_then_segment/mri_ch2_aal_heldout_mirrored.nii.gz'
    """
    from monai_fovea.data import samples
    from monai_fovea.data.io import write_nifti

    folder = Path(cache_dir) if cache_dir is not None else samples.data_dir() / "segment_then_segment"
    path = folder / "mri_ch2_aal_heldout_mirrored.nii.gz"
    label_path = folder / "mri_ch2_aal_heldout_mirrored_label.nii.gz"
    if not (path.is_file() and label_path.is_file()):
        test = _aal_halves()["test"]
        affine = np.diag([-1.0, 1.0, 1.0, 1.0]) @ test["affine"]  # reflect the world: x -> -x
        folder.mkdir(parents=True, exist_ok=True)
        write_nifti(test["item"]["label"][0].astype(np.uint8), label_path, affine)
        write_nifti(test["raw"].astype(np.uint8), path, affine)  # the T1 sample is uint8
    return str(path)
