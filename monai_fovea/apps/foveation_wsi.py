"""Training, evaluation and inference of the ``foveation_wsi_segmentation`` bundle (foveation on a whole slide).

There is no labelled whole-slide image offline, so the bundle's task is defined on the one real slide we have,
the ``cmu_slide`` sample (H&E skin, 2220 × 2967 px at 0.499 µm/px), with labels made by a documented,
deterministic stain rule (:func:`stain_rule_labels`): 0 = glass/background, 1 = tissue (eosin-dominated),
2 = haematoxylin-dense nuclei outside epithelium, 3 = epithelium (a tissue-scale region of dense nuclei). The
slide is split by rows: the top half (rows 0–1482) is for training -- ``train.json`` fits on rows 0–1226
and validates (chooses the best epoch) on the last :data:`VALIDATION_ROWS` rows of it, 1227–1482 --, the bottom
half (rows 1483–2966) is held out for evaluation, which runs the full streaming WSI path
(:class:`monai_fovea.inferers.WSIFoveatedInferer`) on the slide and scores the held-out rows only
(``evaluate.json``: the validation part of ``train.json`` with the streaming inferer).

Training is the bundle's ``configs/train.json``: the foveation recipe of :mod:`monai_fovea.apps.foveation` (a MONAI
``SupervisedTrainer`` workflow) on these items.

The model learns to reproduce the rule; it is a demonstration of the pipeline on real tissue, not a clinical
nuclei segmenter.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.networks.nets import BasicUNet
from monai.transforms import MapTransform

from monai_fovea.data.wsi import PyramidSlide
from monai_fovea.metrics import iou_per_class
from monai_fovea.networks import FoveatedSegmenter

__all__ = [
    "CLASS_NAMES",
    "stain_rule_labels",
    "load_slide_split",
    "build_network",
    "DenseFoveated",
    "VALIDATION_ROWS",
    "slide_items",
    "evaluation_items",
    "ReadLabelRowsd",
    "SegmentationReport",
]

#: rows at the bottom of the training half held out for validation (model choice) by ``train.json``
VALIDATION_ROWS = 256

CLASS_NAMES = ("background", "tissue", "nuclei", "epithelium")
#: the epithelium rule's smoothing (level-0 pixels) and smallest region; see :func:`stain_rule_labels`
EPITHELIUM_SIGMA = 24.0
EPITHELIUM_MIN_AREA = 20_000
logger = logging.getLogger("monai_fovea.foveation_wsi")


def stain_rule_labels(rgb: np.ndarray, epithelium: bool = True) -> np.ndarray:
    """Deterministic labels of an H&E image ``[H, W, 3]`` uint8 (the bundle's training target).

    Rule (all thresholds are Otsu thresholds of this image, so the rule adapts to the slide's staining; the sizes
    are fixed in level-0 pixels of the 0.5 µm/px sample and were fixed before any training):

    1. tissue: HSV saturation ``(max - min) / max`` above its Otsu threshold (computed on every 4th pixel), then a
       2-iteration binary opening (removes dust and JPEG speckle);
    2. nuclei (a **cell-scale** class): tissue pixels whose haematoxylin optical density
       (``skimage.color.rgb2hed``, channel 0) is above the Otsu threshold of the haematoxylin values inside the
       tissue (every 7th tissue pixel), then a 1-iteration opening;
    3. epithelium (a **tissue-scale** region, with ``epithelium``): where the haematoxylin density averaged over
       the tissue around a pixel (Gaussian, sigma :data:`EPITHELIUM_SIGMA` = 24 px = 12 µm, weighted by the tissue
       mask so glass does not dilute it, and at least 20 % tissue around) is above its Otsu threshold inside the
       tissue (every 7th pixel); components under :data:`EPITHELIUM_MIN_AREA` px dropped, enclosed holes under
       that area filled (a lumen or cavity as large as a region stays out). A pixel's epithelium label depends
       on its neighbourhood, not on its own colour: the class needs context;
    4. label 3 in the epithelium region -- one filled area, its nuclei and the small gaps between its cells
       included, as a pathologist outlines an epidermis band --, else 2 where nuclei, else 1 where tissue, else 0.
       A dark nucleus is epithelium or nuclei by where it lies: inside the region the class is decided at tissue
       scale (a wide field of view suffices, and the region's inside has no cell-scale detail), outside it at
       cell scale (full resolution).

    Returns:
        uint8 ``[H, W]`` with values in {0, 1, 2, 3} ({0, 1, 2} without ``epithelium``).
    """
    from scipy import ndimage
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_objects

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be [H, W, 3], got shape {rgb.shape}")
    f = rgb.astype(np.float32) / 255.0
    mx, mn = f.max(-1), f.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    tissue = ndimage.binary_opening(sat > threshold_otsu(sat[::4, ::4]), iterations=2)
    labels = tissue.astype(np.uint8)
    if tissue.any():
        haem = rgb2hed(rgb)[..., 0].astype(np.float32)
        nuclei = tissue & (haem > threshold_otsu(haem[tissue][::7]))
        labels[ndimage.binary_opening(nuclei, iterations=1)] = 2
        if epithelium:
            around = ndimage.gaussian_filter(tissue.astype(np.float32), EPITHELIUM_SIGMA)
            density = ndimage.gaussian_filter(np.where(tissue, haem, 0).astype(np.float32), EPITHELIUM_SIGMA)
            density /= np.maximum(around, 1e-3)
            region = (density > threshold_otsu(density[tissue][::7])) & (around > 0.2)
            region = remove_small_objects(region, max_size=EPITHELIUM_MIN_AREA - 1)
            # one filled area with its nuclei and the gaps between its cells (an epidermis band as a pathologist
            # outlines it; a lumen or cavity as large as a region stays out): inside it the class is decided by the
            # surroundings, outside it by the pixel -- the two need different fields of view
            holes = ndimage.binary_fill_holes(region) & ~region  # enclosed only: glass at the border is no hole
            region |= holes & ~remove_small_objects(holes, max_size=EPITHELIUM_MIN_AREA - 1)
            labels[region] = 3
    return labels


def load_slide_split(slide_path: str | os.PathLike, split: str, backend: str = "tifffile") -> dict[str, Any]:
    """One half of the sample slide with its rule labels (small slides only: level 0 is read whole).

    Args:
        slide_path: the slide (e.g. ``samples.fetch("cmu_slide")["image"]``).
        split: ``"train"`` (rows ``[0, H // 2)``), ``"test"`` (rows ``[H // 2, H)``), ``"all"``, or the two parts of
            ``"train"``: ``"fit"`` (rows ``[0, H // 2 - VALIDATION_ROWS)``) and ``"val"`` (the last
            :data:`VALIDATION_ROWS` rows of ``"train"``).

    Returns:
        ``{"image": float32 [3, h, W] in [0, 1], "label": int64 [h, W], "rows": (r0, r1)}``; the rule runs on the
        whole slide so both halves share its thresholds.
    """
    if split not in ("train", "test", "all", "fit", "val"):
        raise ValueError(f"split must be 'train', 'test', 'all', 'fit' or 'val', got {split!r}")
    rgb, labels = _slide_and_labels(str(slide_path), backend)
    h = rgb.shape[0]
    r0, r1 = {"train": (0, h // 2), "test": (h // 2, h), "all": (0, h), "fit": (0, h // 2 - VALIDATION_ROWS),
              "val": (h // 2 - VALIDATION_ROWS, h // 2)}[split]
    image = torch.from_numpy(np.ascontiguousarray(rgb[r0:r1].transpose(2, 0, 1))).float() / 255.0
    return {"image": image, "label": torch.from_numpy(labels[r0:r1].astype(np.int64)), "rows": (r0, r1)}


@functools.lru_cache(maxsize=2)
def _slide_and_labels(slide_path: str, backend: str) -> tuple[np.ndarray, np.ndarray]:
    """Level 0 ``[H, W, 3]`` and its rule labels, read once per slide (fit and validation share them)."""
    with PyramidSlide(slide_path, backend) as slide:
        h, w = slide.shape
        if h * w > 64e6:
            raise ValueError(f"load_slide_split reads level 0 whole; slide {slide_path} ({h}×{w}) is too large")
        rgb = slide.read_region(0, 0, 0, h, w).transpose(1, 2, 0)
    rgb.flags.writeable = False
    labels = stain_rule_labels(rgb)
    labels.flags.writeable = False
    return rgb, labels


def slide_items(slide_path: str | os.PathLike, split: str, backend: str = "tifffile") -> list[dict[str, Any]]:
    """One in-memory data item of a split of the slide (:func:`load_slide_split`) for MONAI's engines:
    ``[{"image": float32 [3, h, W], "label": int64 [1, h, W], "rows": [r0, r1]}]``.

    Example:
        >>> (item,) = slide_items(samples.fetch("cmu_slide")["image"], "val")  # doctest: +SKIP
        >>> tuple(item["label"].shape), item["rows"]  # doctest: +SKIP
        ((1, 256, 2220), [1227, 1483])
    """
    d = load_slide_split(slide_path, split, backend)
    return [{"image": d["image"], "label": d["label"][None], "rows": [int(r) for r in d["rows"]]}]


def evaluation_items(slide_path: str | os.PathLike, output_dir: str | os.PathLike, split: str = "test",
                     backend: str = "tifffile") -> list[dict[str, Any]]:
    """The evaluation item: the slide *file* (streamed by the WSI inferer, as in inference) with the rule labels
    of the held-out rows as ``truth`` (``[1, h, W]``) and the rows they cover::

        [{"image": path, "stem", "output_dir", "tile_dir": "", "truth": int64 [1, h, W], "rows": [r0, r1]}]
    """
    d = load_slide_split(slide_path, split, backend)
    stem = Path(slide_path).name.split(".")[0]
    return [{"image": str(slide_path), "stem": stem, "output_dir": str(output_dir), "tile_dir": "",
             "truth": d["label"][None], "rows": [int(r) for r in d["rows"]]}]


class ReadLabelRowsd(MapTransform):
    """Evaluation postprocessing after the streaming WSI inferer: ``d[key]`` (the written outputs,
    ``{"label": path, ...}``) → the label map's rows ``d[rows_key]`` as int64 ``[1, h, W]``; ``d[label_key]`` ←
    ``d[truth_key]`` so that the metrics compare ``pred`` with ``label`` as in validation.

    Example:
        >>> ReadLabelRowsd("pred")({"pred": {"label": "out/slide_label.tif"}, "rows": [1483, 2967], "truth": t})  # doctest: +SKIP
    """

    def __init__(self, keys: KeysCollection = "pred", rows_key: str = "rows", label_key: str = "label",
                 truth_key: str = "truth") -> None:
        super().__init__(keys)
        self.rows_key, self.label_key, self.truth_key = rows_key, label_key, truth_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import tifffile

        d = dict(data)
        r0, r1 = (int(r) for r in d[self.rows_key])
        for key in self.keys:
            with tifffile.TiffFile(d[key]["label"]) as tif:
                d[key] = torch.from_numpy(tif.pages[0].asarray()[r0:r1].astype(np.int64))[None]
        d[self.label_key] = d[self.truth_key]
        return d


class SegmentationReport:
    """Evaluator handler: per-class IoU over all evaluated pixels (Σ∩/Σ∪, the paper's dataset-level IoU), their
    mean, the mean over the foreground classes, pixel accuracy, the rows scored, the inferer's statistics and the
    time, written to ``output_dir/metrics.json`` and into ``engine.state.metrics``.

    Reads ``pred`` and ``label`` (class-index maps ``[1, h, W]``) and ``rows`` from each decollated item.

    Example:
        >>> SegmentationReport("eval", CLASS_NAMES, inferer=wsi_inferer).attach(evaluator)  # doctest: +SKIP
    """

    def __init__(self, output_dir: str | os.PathLike, class_names: Sequence[str] = CLASS_NAMES, inferer: Any = None,
                 filename: str = "metrics.json") -> None:
        self.output_dir, self.class_names = Path(output_dir), tuple(class_names)
        self.inferer, self.filename = inferer, filename
        self._reset()

    def _reset(self, engine: Any = None) -> None:
        self.pred: list[np.ndarray] = []
        self.target: list[np.ndarray] = []
        self.rows: list[list[int]] = []
        self.t0 = time.time()

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _collect(self, engine: Any) -> None:
        batch, output = engine.state.batch, engine.state.output
        for b, o in (zip(batch, output) if isinstance(output, list) else [(batch, output)]):
            self.pred.append(np.asarray(torch.as_tensor(o["pred"]).detach().cpu()).reshape(-1))
            self.target.append(np.asarray(torch.as_tensor(o.get("label", b.get("label"))).detach().cpu()).reshape(-1))
            self.rows.append([int(r) for r in b.get("rows", [])])

    def _write(self, engine: Any) -> None:
        pred, target = np.concatenate(self.pred)[None], np.concatenate(self.target)[None]
        iou = iou_per_class(pred, target, len(self.class_names)).tolist()
        result = {
            "iou": dict(zip(self.class_names, iou)),
            "mean_iou": float(np.mean(iou)),
            "mean_iou_fg": float(np.mean(iou[1:])),
            "pixel_accuracy": float((pred == target).mean()),
            "test_rows": self.rows[0] if len(self.rows) == 1 else self.rows,
            "inference": dict(getattr(self.inferer, "last_stats", {}) or {}),
            "seconds": round(time.time() - self.t0, 1),
        }
        engine.state.metrics.update({"mean_iou": result["mean_iou"], "pixel_accuracy": result["pixel_accuracy"]})
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / self.filename).write_text(json.dumps(result, indent=2, default=str))
        logger.info("IoU %s, mean %.4f", result["iou"], result["mean_iou"])


def build_network(
    patch_sizes: Sequence[int] = (64, 128, 256),
    output_size: int = 64,
    num_classes: int = len(CLASS_NAMES),
    features: Sequence[int] = (8, 8, 16, 32, 64, 8),
    mode: str = "soft",
    fixed_index: int = 0,
    fusion: str = "output",
) -> FoveatedSegmenter:
    """The bundle's network: a tiny MONAI ``BasicUNet`` backbone in a ``FoveatedSegmenter`` (stride = smallest FoV),
    whose head mixes the predictions of the scales (``fusion="output"``; ``"input"`` is the paper's eq. 1, see
    ``FoveatedSegmenter``); ``mode="fixed"`` with ``fixed_index`` gives a fixed-scale baseline."""
    backbone = BasicUNet(spatial_dims=2, in_channels=3, out_channels=num_classes, features=tuple(features))
    return FoveatedSegmenter(backbone, patch_sizes=list(patch_sizes), output_size=output_size, spatial_dims=2,
                             in_channels=3, mode=mode, fixed_index=fixed_index, fusion=fusion)


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
