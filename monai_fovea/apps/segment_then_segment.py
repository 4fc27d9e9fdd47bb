"""Training and evaluation of segment-then-segment (seed 001): the coarse net on uniformly downscaled images, the
fine net on ground-truth component crops, soft-Dice loss, Adam, best checkpoint by validation DSC.

Used by ``bundles/segment_then_segment/configs/{train,evaluate,multi_gpu_train}.json`` and ``benchmarks/``.
Data items are dicts ``{"image": [C, *S] float array in [0, 1], "label": [1, *S] mask}`` held in memory (the
sample images are small); 2D and 3D alike.

Sample split of the bundle (``sample_split``), no pixel in two parts:

* ``dsb2018_nuclei`` (512 × 512 fluorescence, 125 nuclei): train = top half (rows 0-255, random 256² windows),
  validation = bottom-left quadrant (rows 256-511, cols 0-255), test = bottom-right quadrant (cols 256-511).

3D split (``aal_structures_split``, the bundle's ``train_3d.json`` and ``benchmarks/sts_accuracy_3d.py``):

* ``mri_ch2`` T1 (181 × 217 × 181, 1 mm), AAL amygdala / pallidum / Heschl gyrus (labels 41, 42, 75, 76, 79, 80):
  train = left hemisphere (array x >= 91), test = right hemisphere (x < 90) mirrored along x; both cut to the box
  around the structures of both halves plus 8 voxels (76 × 61 × 64).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from monai.data import DataLoader, Dataset
from monai.losses import DiceLoss
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
from tqdm.auto import tqdm

from monai_fovea.inferers.segment_then_segment import SegmentThenSegmentInferer
from monai_fovea.data.io import save_state_dict
from monai_fovea.metrics import segmentation_scores
from monai_fovea.transforms.boxes import RandComponentCropd

__all__ = [
    "build_unet",
    "normalize_intensity",
    "load_sample_items",
    "sample_split",
    "coarse_train_transform",
    "fine_train_transform",
    "train_net",
    "train",
    "evaluate",
    "AAL_STRUCTURES",
    "aal_structures_split",
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


def _unwrap(net: torch.nn.Module) -> torch.nn.Module:
    return net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net


def train_net(
    net: torch.nn.Module,
    items: list[dict],
    transform: Callable,
    validate: Callable[[torch.nn.Module], float],
    checkpoint: str | Path,
    epochs: int = 10,
    samples_per_epoch: int = 64,
    batch_size: int = 8,
    lr: float = 1e-3,
    device: str | torch.device = "cpu",
    distributed: bool = False,
    progress: bool = True,
    seed: int = 0,
    loss_fn: Callable | None = None,
) -> dict[str, list[float]]:
    """Train ``net`` with soft Dice (sigmoid; or ``loss_fn``) and Adam; after every epoch ``validate(net)`` → DSC, and the best
    state dict (plain, unwrapped) is saved to ``checkpoint`` (by rank 0 under DDP).

    Returns:
        ``{"loss": mean loss per epoch, "val_dice": DSC per epoch}``.

    Example:
        >>> net = build_unet(2, 1)
        >>> history = train_net(net, items, fine_train_transform((64, 64)),
        ...                     lambda n: 0.0, "fine.pt", epochs=2)  # doctest: +SKIP
    """
    device = torch.device(device)
    net = net.to(device)
    rank = dist.get_rank() if distributed else 0
    pool = [items[i % len(items)] for i in range(samples_per_epoch)]  # each draw gets its own random crop
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(seed + rank)  # MONAI transforms draw from their own RandomState, not torch's
    dataset = Dataset(pool, transform)
    sampler = torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=seed) if distributed else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, num_workers=0)
    model = torch.nn.parallel.DistributedDataParallel(net) if distributed else net
    loss_fn = DiceLoss(sigmoid=True) if loss_fn is None else loss_fn
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history: dict[str, list[float]] = {"loss": [], "val_dice": []}
    best = -1.0
    Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
    for epoch in tqdm(range(epochs), desc=f"train {Path(checkpoint).stem}", disable=not progress or rank != 0):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        losses = []
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch["image"].to(device)), batch["label"].to(device))
            loss.backward()
            optimizer.step()
            losses.append(loss.detach().item())
        history["loss"].append(float(np.mean(losses)))
        model.eval()
        score = float(validate(_unwrap(model)))
        history["val_dice"].append(score)
        if score > best and rank == 0:
            best = score
            save_state_dict(model, checkpoint)
    if distributed:
        dist.barrier()  # rank 0 has written the best checkpoint
    _unwrap(model).load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
    return history


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


def train(
    train_items: list[dict],
    val_items: list[dict],
    model_dir: str | Path,
    coarse_size: int | Sequence[int] = 32,
    fine_size: int | Sequence[int] = 32,
    tile_size: int | Sequence[int] = 256,
    spatial_dims: int = 2,
    in_channels: int = 1,
    features: Sequence[int] = (8, 16, 32, 64, 128, 8),
    coarse_epochs: int = 10,
    fine_epochs: int = 10,
    samples_per_epoch: int = 64,
    batch_size: int = 8,
    lr: float = 1e-3,
    device: str | torch.device = "cpu",
    init_fine_from_coarse: bool = True,
    distributed: bool = False,
    seed: int = 0,
    progress: bool = True,
    coarse_name: str = "coarse.pt",
    fine_name: str = "model.pt",
    network_fn: Callable[[], torch.nn.Module] | None = None,
    loss_fn: Callable | None = None,
) -> dict:
    """Train the coarse net (downscaled tiles), then the fine net (GT crops; initialised from the coarse net when
    ``init_fine_from_coarse``), each keeping its best checkpoint by validation DSC: coarse-only DSC for the coarse
    net, segment-then-segment DSC (with the best coarse net) for the fine net.

    Writes ``model_dir/coarse_name`` and ``model_dir/fine_name`` (plain state dicts). ``network_fn`` builds any
    other MONAI network (one output channel, logits) for both stages instead of ``build_unet``; ``loss_fn``
    replaces the soft Dice loss (e.g. ``DiceCELoss(sigmoid=True)`` for very small foreground fractions).

    Returns:
        ``{"coarse": history, "fine": history, "val": evaluate(...) of the best nets}``.

    Example:
        >>> out = train(sample_split("dsb2018_nuclei", "train"), sample_split("dsb2018_nuclei", "val"),
        ...             "models", coarse_size=64, fine_size=64)  # doctest: +SKIP
        >>> out["val"]["sts"]["dice"]  # doctest: +SKIP
        0.918
    """
    from monai.utils import ensure_tuple_rep, set_determinism

    set_determinism(seed)
    coarse = tuple(ensure_tuple_rep(coarse_size, spatial_dims))
    fine = tuple(ensure_tuple_rep(fine_size, spatial_dims))
    tile = tuple(ensure_tuple_rep(tile_size, spatial_dims))
    model_dir = Path(model_dir)
    make = network_fn if network_fn is not None else (lambda: build_unet(spatial_dims, in_channels, features))
    coarse_net, fine_net = make(), make()
    common = dict(samples_per_epoch=samples_per_epoch, batch_size=batch_size, lr=lr, device=device,
                  distributed=distributed, progress=progress, seed=seed, loss_fn=loss_fn)
    coarse_hist = train_net(
        coarse_net, train_items, coarse_train_transform(coarse, tile),
        lambda net: evaluate(val_items, net, None, coarse, fine, device)["coarse"]["dice"],
        model_dir / coarse_name, epochs=coarse_epochs, **common,
    )
    if init_fine_from_coarse:
        fine_net.load_state_dict(copy.deepcopy(coarse_net.state_dict()))
    coarse_net.eval()
    fine_hist = train_net(
        fine_net, train_items, fine_train_transform(fine),
        lambda net: evaluate(val_items, coarse_net, net, coarse, fine, device)["sts"]["dice"],
        model_dir / fine_name, epochs=fine_epochs, **common,
    )
    val = evaluate(val_items, coarse_net, fine_net, coarse, fine, device)
    return {"coarse": coarse_hist, "fine": fine_hist, "val": val}


# ---------------------------------------------------------------------------------------------------------------------
# 3D: AAL small structures on the mri_ch2 T1 (data of train_3d.json / benchmarks/sts_accuracy_3d.py), NIfTI inference

AAL_STRUCTURES = (41, 42, 75, 76, 79, 80)  # amygdala, pallidum, Heschl gyrus (left, right)
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


def aal_structures_split(part: str = "train") -> list[dict[str, np.ndarray]]:
    """Held-out 3D split of the ``mri_ch2`` T1 for the union of the AAL amygdala, pallidum and Heschl gyrus.

    ``train`` = left hemisphere (array x >= 91, RAS x > 0); ``test`` = right hemisphere (x < 90) mirrored along x
    so that it looks like a left one. Both are cut to the same field of view, the box around the six structures of
    both halves plus 8 voxels (76 × 61 × 64). The image is normalised on the whole head (1st-99.8th percentile)
    before cutting. No voxel is in both parts; there is no separate validation volume (one subject).

    Returns:
        ``[{"image": [1, 76, 61, 64] float32 in [0, 1], "label": [1, 76, 61, 64] float32 0/1}]``.

    Example:
        >>> item = aal_structures_split("test")[0]  # doctest: +SKIP
        >>> item["image"].shape, int(item["label"].sum())  # doctest: +SKIP
        ((1, 76, 61, 64), 6040)
    """
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', got {part!r}.")
    return [_aal_halves()[part]["item"]]


def default_input_3d(cache_dir: str | Path | None = None) -> str:
    """Path of the 3D bundle's default input: the held-out T1 crop of ``aal_structures_split("test")`` (the right
    hemisphere mirrored into a left one, raw intensities), written once (with its ground-truth mask beside it,
    ``*_label.nii.gz``) into ``cache_dir`` (default: the sample data folder's ``segment_then_segment/``).

    Its affine is that of the mirror image (the right hemisphere's voxel positions reflected about the
    mid-sagittal plane x = 0), so it is stored in the training frame (RAS, 1 mm) like the training half: a model
    that brings its inputs into that frame sees what a left hemisphere looks like.

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
