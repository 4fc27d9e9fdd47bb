"""Training, evaluation and inference of the ``foveation_wsi_segmentation`` bundle (foveation on a whole slide).

There is no labelled whole-slide image offline, so the bundle's task is defined on the one real slide we have,
the ``cmu_slide`` sample (H&E skin, 2220 × 2967 px at 0.499 µm/px), with labels made by a documented,
deterministic stain rule (:func:`stain_rule_labels`): 0 = glass/background, 1 = tissue (eosin-dominated),
2 = haematoxylin-dense nuclei. The slide is split by rows: the top half (rows 0–1482) trains, the bottom half
(rows 1483–2966) is held out for evaluation, which runs the full streaming WSI path
(:class:`monai_fovea.inferers.WSIFoveatedInferer`) on the slide and scores the held-out rows only.

The model learns to reproduce the rule; it is a demonstration of the pipeline on real tissue, not a clinical
nuclei segmenter.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.data import DataLoader, Dataset
from monai.networks.nets import BasicUNet
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from monai_fovea.data.io import save_state_dict
from monai_fovea.data.wsi import PyramidSlide
from monai_fovea.inferers.wsi_foveated import WSIFoveatedInferer
from monai_fovea.metrics import iou_per_class
from monai_fovea.networks import FoveatedSegmenter

__all__ = [
    "CLASS_NAMES",
    "stain_rule_labels",
    "load_slide_split",
    "build_network",
    "DenseFoveated",
    "train",
    "evaluate",
]

CLASS_NAMES = ("background", "tissue", "nuclei")
logger = logging.getLogger("monai_fovea.foveation_wsi")


def stain_rule_labels(rgb: np.ndarray) -> np.ndarray:
    """Deterministic 3-class labels of an H&E image ``[H, W, 3]`` uint8 (the bundle's training target).

    Rule (all thresholds are Otsu thresholds of this image, so the rule adapts to the slide's staining):

    1. tissue: HSV saturation ``(max - min) / max`` above its Otsu threshold (computed on every 4th pixel), then a
       2-iteration binary opening (removes dust and JPEG speckle);
    2. nuclei: tissue pixels whose haematoxylin optical density (``skimage.color.rgb2hed``, channel 0) is above
       the Otsu threshold of the haematoxylin values inside the tissue (every 7th tissue pixel), then a
       1-iteration opening;
    3. label 2 where nuclei, else 1 where tissue, else 0.

    Returns:
        uint8 ``[H, W]`` with values in {0, 1, 2}.
    """
    from scipy import ndimage
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be [H, W, 3], got shape {rgb.shape}")
    f = rgb.astype(np.float32) / 255.0
    mx, mn = f.max(-1), f.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    tissue = ndimage.binary_opening(sat > threshold_otsu(sat[::4, ::4]), iterations=2)
    labels = tissue.astype(np.uint8)
    if tissue.any():
        haem = rgb2hed(rgb)[..., 0]
        nuclei = tissue & (haem > threshold_otsu(haem[tissue][::7]))
        labels[ndimage.binary_opening(nuclei, iterations=1)] = 2
    return labels


def load_slide_split(slide_path: str | os.PathLike, split: str, backend: str = "tifffile") -> dict[str, Any]:
    """One half of the sample slide with its rule labels (small slides only: level 0 is read whole).

    Args:
        slide_path: the slide (e.g. ``samples.fetch("cmu_slide")["image"]``).
        split: ``"train"`` (rows ``[0, H // 2)``), ``"test"`` (rows ``[H // 2, H)``) or ``"all"``.

    Returns:
        ``{"image": float32 [3, h, W] in [0, 1], "label": int64 [h, W], "rows": (r0, r1)}``; the rule runs on the
        whole slide so both halves share its thresholds.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    with PyramidSlide(slide_path, backend) as slide:
        h, w = slide.shape
        if h * w > 64e6:
            raise ValueError(f"load_slide_split reads level 0 whole; slide {slide_path} ({h}×{w}) is too large")
        rgb = slide.read_region(0, 0, 0, h, w).transpose(1, 2, 0)
    labels = stain_rule_labels(rgb)
    r0, r1 = {"train": (0, h // 2), "test": (h // 2, h), "all": (0, h)}[split]
    image = torch.from_numpy(np.ascontiguousarray(rgb[r0:r1].transpose(2, 0, 1))).float() / 255.0
    return {"image": image, "label": torch.from_numpy(labels[r0:r1].astype(np.int64)), "rows": (r0, r1)}


def build_network(
    patch_sizes: Sequence[int] = (64, 128, 256),
    output_size: int = 64,
    num_classes: int = 3,
    features: Sequence[int] = (8, 8, 16, 32, 64, 8),
    mode: str = "soft",
) -> FoveatedSegmenter:
    """The bundle's network: a tiny MONAI ``BasicUNet`` backbone in a ``FoveatedSegmenter`` (stride = smallest FoV)."""
    backbone = BasicUNet(spatial_dims=2, in_channels=3, out_channels=num_classes, features=tuple(features))
    return FoveatedSegmenter(backbone, patch_sizes=list(patch_sizes), output_size=output_size, spatial_dims=2, in_channels=3, mode=mode)


class DenseFoveated(torch.nn.Module):
    """Dense image in, class probabilities out: a ``FoveatedSegmenter`` run over every location of ``[B, C, H, W]``
    by :class:`monai_fovea.inferers.FoveatedInferer` (non-overlapping tiles). Lets MONAI's bundle checks
    (``verify_net_in_out``) and plain ``net(image)`` calls use the foveated network.

    Example:
        >>> dense = DenseFoveated(build_network())
        >>> dense(torch.rand(1, 3, 128, 192)).shape
        torch.Size([1, 3, 128, 192])
    """

    def __init__(self, network: FoveatedSegmenter, sw_batch_size: int = 32) -> None:
        super().__init__()
        from monai_fovea.inferers import FoveatedInferer

        self.network = network
        self.inferer = FoveatedInferer(sw_batch_size=sw_batch_size, return_apsm=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.inferer(image, self.network)


class _FoveatedStep(torch.nn.Module):
    """One training forward (head on the low-res map, weights at the centres, backbone on the blend) as a single
    ``forward`` so DistributedDataParallel sees every parameter use."""

    def __init__(self, net: FoveatedSegmenter) -> None:
        super().__init__()
        self.net = net

    def forward(self, lowres: torch.Tensor, patches: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        weights = self.net.weights_at(self.net.scale_weights(lowres), centers)
        return self.net.forward_patches(patches, weights)


def _training_centers(shape: Sequence[int], stride: int) -> torch.Tensor:
    h, w = shape
    ys, xs = torch.meshgrid(torch.arange(stride // 2, h, stride), torch.arange(stride // 2, w, stride), indexing="ij")
    return torch.stack([ys.reshape(-1), xs.reshape(-1)], 1)


def train(
    slide: str | os.PathLike,
    output: str | os.PathLike,
    epochs: int = 4,
    batch_size: int = 16,
    lr: float = 2e-3,
    train_stride: int = 32,
    patch_sizes: Sequence[int] = (64, 128, 256),
    output_size: int = 64,
    features: Sequence[int] = (8, 8, 16, 32, 64, 8),
    mode: str = "soft",
    seed: int = 0,
    device: str | torch.device = "cpu",
    distributed: bool = False,
    max_steps: int | None = None,
    log_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train the bundle's network on the top half of the slide (rule labels), cross-entropy, Adam.

    Each epoch visits every location of a ``train_stride`` grid over the training half (shifted by a random
    offset per epoch, plus random flips of the whole half), ``batch_size`` locations per step; with
    ``distributed=True`` (``torchrun``) the locations are split by a ``DistributedSampler`` and the model is
    wrapped in ``DistributedDataParallel`` (NCCL on CUDA, gloo on CPU). Rank 0 saves the plain state dict.

    Returns:
        ``{"loss": last-epoch mean loss, "steps": int, "seconds": float, "output": path}``.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rank, world = 0, 1
    if distributed:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() and str(device).startswith("cuda") else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if str(device).startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    device = torch.device(device)
    data = load_slide_split(slide, "train")
    image, label = data["image"].to(device), data["label"].to(device)
    net = build_network(patch_sizes, output_size, len(CLASS_NAMES), features, mode).to(device)
    step_module: torch.nn.Module = _FoveatedStep(net)
    if distributed:
        step_module = torch.nn.parallel.DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    writer = None
    if log_dir is not None and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    centers = _training_centers(image.shape[1:], train_stride)
    dataset = Dataset(list(range(len(centers))))
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed) if distributed else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True, num_workers=0)
    steps, t0, epoch_loss = 0, time.time(), float("nan")
    net.train()
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        # per-epoch augmentation of the whole training half: a random flip, and a random shift of the grid
        flips = [d for d, f in zip((1, 2), rng.random(2) < 0.5) if f]
        img_e = image.flip(flips) if flips else image
        lab_e = label.flip([d - 1 for d in flips]) if flips else label
        shift = torch.as_tensor(rng.integers(-train_stride // 2, train_stride // 2, size=2))
        pyramid = net.build_pyramid(img_e)
        lowres = net.lowres(img_e[None])
        losses = []
        for idx in tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=rank != 0):
            ctr = (centers[idx] + shift).clamp(min=0)
            ctr = torch.minimum(ctr, torch.tensor(img_e.shape[1:]) - 1).to(device)
            patches = net.extract_patches(img_e, ctr, pyramid)
            target = net.target_patches(lab_e, ctr, ignore_index=-100)
            logits = step_module(lowres, patches, ctr)
            loss = F.cross_entropy(logits, target, ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            steps += 1
            if writer is not None:
                writer.add_scalar("train/loss", losses[-1], steps)
            if max_steps is not None and steps >= max_steps:
                break
        epoch_loss = float(np.mean(losses)) if losses else float("nan")
        if rank == 0:
            logger.info("epoch %d/%d: loss %.4f (%d steps, %.0f s)", epoch + 1, epochs, epoch_loss, steps, time.time() - t0)
        if max_steps is not None and steps >= max_steps:
            break
    result = {"loss": epoch_loss, "steps": steps, "seconds": round(time.time() - t0, 1), "output": str(output), "world_size": world}
    if rank == 0:
        save_state_dict(net, output)
    if writer is not None:
        writer.close()
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return result


def evaluate(
    slide: str | os.PathLike,
    network: FoveatedSegmenter,
    output_dir: str | os.PathLike,
    backend: str = "tifffile",
    sw_batch_size: int = 32,
    use_tissue_mask: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Run the streaming WSI inference on the whole slide and score the held-out bottom half against the rule.

    Writes the inference outputs and ``metrics.json`` into ``output_dir``.

    Returns:
        ``{"iou": {class: value}, "mean_iou": float, "mean_iou_fg": float (tissue + nuclei), "pixel_accuracy":
        float, "test_rows": (r0, r1), "seconds": float}``.
    """
    import tifffile

    t0 = time.time()
    inferer = WSIFoveatedInferer(sw_batch_size=sw_batch_size, backend=backend, use_tissue_mask=use_tissue_mask, sw_device=device)
    paths = inferer(slide, network.to(device), output_dir)
    test = load_slide_split(slide, "test")
    r0, r1 = test["rows"]
    with tifffile.TiffFile(paths["label"]) as tif:
        pred = tif.pages[0].asarray()[r0:r1]
    target = test["label"].numpy()
    iou = iou_per_class(pred[None], target[None], len(CLASS_NAMES)).tolist()  # dataset-level Σ∩/Σ∪
    result = {
        "iou": dict(zip(CLASS_NAMES, iou)),
        "mean_iou": float(np.mean(iou)),
        "mean_iou_fg": float(np.mean(iou[1:])),
        "pixel_accuracy": float((pred == target).mean()),
        "test_rows": [int(r0), int(r1)],
        "inference": inferer.last_stats,
        "seconds": round(time.time() - t0, 1),
    }
    out = Path(output_dir) / "metrics.json"
    out.write_text(json.dumps(result, indent=2))
    logger.info("held-out rows %d-%d: IoU %s, mean %.4f", r0, r1 - 1, result["iou"], result["mean_iou"])
    return result
