"""Foveated inference over a whole-slide image, streamed from the slide pyramid with bounded memory.

:class:`WSIFoveatedInferer` runs a :class:`monai_fovea.networks.FoveatedSegmenter` on every location of a slide's
low-resolution grid (one location per ``stride`` cell, ``stride`` = the network's, by default its smallest field
of view, i.e. non-overlapping tiles of the predicted region — what the authors' inference does in practice):

1. the low-resolution map (mean colour per cell, :func:`monai_fovea.data.wsi.cell_means`) is read band by band
   from a coarse pyramid level and goes once through the foveation head → scale weights per location;
2. an optional tissue mask (Otsu on the HSV saturation of a low level) drops glass-only locations;
3. the remaining locations are processed ``sw_batch_size`` at a time in raster order: their multi-scale
   patches are read from the pyramid (:func:`monai_fovea.data.wsi.read_multiscale`, one region per scale per
   batch, each scale from its cheapest level), blended with the weights, segmented, and the predicted tiles are
   written into a disk-backed (``numpy.memmap``) label map;
4. the label map becomes a tiled pyramidal TIFF with the slide's size and resolution
   (:func:`monai_fovea.data.io.write_pyramidal_tiff`), plus a PNG overlay on a slide thumbnail and the APSM
   (average patch size map, Σ_d f_d·s_d per location) as a PNG.

Peak memory is one batch of patches plus the low-resolution maps; the label map lives on disk.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from monai_fovea.data.io import write_png, write_pyramidal_tiff
from monai_fovea.data.wsi import PyramidSlide, cell_means, read_multiscale, tissue_mask
from monai_fovea.inferers.foveated import region_starts
from monai_fovea.visualize import add_colour_bar, apsm_image, label_overlay

__all__ = ["WSIFoveatedInferer"]

_OUTPUTS = ("label", "probability")


class WSIFoveatedInferer:
    """Foveated segmentation of a whole slide, streamed from its pyramid; writes label TIFF, overlay and APSM.

    Args:
        sw_batch_size: locations per network call (and per pyramid read).
        backend: MONAI ``WSIReader`` backend used to open slides (``"openslide"``, ``"tifffile"``, ``"cucim"``).
        use_tissue_mask: skip locations whose cell holds no tissue (Otsu on a low level); skipped cells get label
            ``background_label``.
        background_label: label written where no prediction is made (glass).
        output: ``"label"`` (argmax, uint8) or ``"probability"`` (softmax of ``probability_class`` × 255, uint8).
        probability_class: the class whose probability is written with ``output="probability"``.
        intensity_scale, intensity_shift: the network's input normalisation ``x * scale + shift`` applied to the
            slide's 0–255 values (must match training; per-pixel affine, so it commutes with the cell means).
        padding_mode, pad_value: how patches leaving the slide are filled (before normalisation).
        sw_device: device of the patches and the network (e.g. ``"cuda"``); default: the network's device.
        device: device where predictions are converted to labels before going to the disk-backed map
            (default CPU).
        progress: show a tqdm progress bar over the batches.
        overlay_max_size: longest side of the overlay and APSM PNGs.
        tile: tile size of the output TIFF.

    Example:
        >>> inferer = WSIFoveatedInferer(sw_batch_size=16, backend="tifffile")  # doctest: +SKIP
        >>> paths = inferer("slide.tif", net, output_dir="out")  # {'label': ..., 'overlay': ..., 'apsm': ...}
    """

    def __init__(
        self,
        sw_batch_size: int = 16,
        backend: str = "openslide",
        use_tissue_mask: bool = True,
        background_label: int = 0,
        output: str = "label",
        probability_class: int = 1,
        intensity_scale: float = 1.0 / 255.0,
        intensity_shift: float = 0.0,
        padding_mode: str = "zeros",
        pad_value: float = 0.0,
        sw_device: str | torch.device | None = None,
        device: str | torch.device | None = "cpu",
        progress: bool = True,
        overlay_max_size: int = 1024,
        tile: int = 256,
    ) -> None:
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
        self.sw_batch_size = sw_batch_size
        self.backend = backend
        self.use_tissue_mask = use_tissue_mask
        self.background_label = background_label
        self.output = output
        self.probability_class = probability_class
        self.intensity_scale = intensity_scale
        self.intensity_shift = intensity_shift
        self.padding_mode = padding_mode
        self.pad_value = pad_value
        self.sw_device = sw_device
        self.device = device
        self.progress = progress
        self.overlay_max_size = overlay_max_size
        self.tile = tile
        self.last_stats: dict[str, Any] = {}

    # --- geometry --------------------------------------------------------------------------------------------
    @staticmethod
    def _tile_offset(net: torch.nn.Module) -> tuple[int, int]:
        """Offset of a location's cell inside its predicted region (level-0 px), checked once per network.

        Location ``i`` (grid index) has centre ``i * t + t // 2`` and owns the cell ``[i * t, (i + 1) * t)``; the
        network predicts the FoV ``s0`` around the centre of the ``o``-pixel crop there, starting at
        ``c - o // 2 + o / 2 - s0 / 2`` (rounded as ``FoveatedInferer`` does, :func:`region_starts`). The cell must
        lie inside that region.
        """
        centre = torch.tensor([[t // 2 for t in net.stride]])
        first = region_starts(centre, net.patch_sizes[0], net.output_size)[0].tolist()  # the in-memory inferer's rule
        offs = [-f for f in first]
        if any(off < 0 or off + t > s0 for off, t, s0 in zip(offs, net.stride, net.patch_sizes[0])):
            raise ValueError(
                f"network stride {tuple(net.stride)} must tile the predicted region: patch_sizes[0]="
                f"{tuple(net.patch_sizes[0])} with output_size={tuple(net.output_size)} gives the cell offset {offs}"
            )
        return offs[0], offs[1]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.intensity_scale + self.intensity_shift

    # --- main entry ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        slide: PyramidSlide | str | os.PathLike,
        network: torch.nn.Module,
        output_dir: str | os.PathLike,
        name: str | None = None,
    ) -> dict[str, Path]:
        """Segment ``slide`` with ``network`` (a ``FoveatedSegmenter``) and write the outputs to ``output_dir``.

        Returns:
            ``{"label": <name>_label.tif, "overlay": <name>_overlay.png, "apsm": <name>_apsm.png}`` (the first is
            ``<name>_prob.tif`` with ``output="probability"``). Statistics of the run are in ``self.last_stats``.

        Raises:
            ValueError: a network that is not 2D, or whose stride does not tile its predicted region.
        """
        if getattr(network, "spatial_dims", 2) != 2:
            raise ValueError("network must be a 2D FoveatedSegmenter for whole-slide images")
        opened = slide if isinstance(slide, PyramidSlide) else PyramidSlide(slide, self.backend)
        try:
            return self._run(opened, network, Path(output_dir), name or Path(opened.path).name.split(".")[0])
        finally:
            if opened is not slide:
                opened.close()

    def _run(self, slide: PyramidSlide, net: torch.nn.Module, output_dir: Path, name: str) -> dict[str, Path]:
        sw_device = torch.device(self.sw_device) if self.sw_device is not None else next(net.parameters()).device
        out_device = torch.device(self.device) if self.device is not None else torch.device("cpu")
        was_training = net.training
        net.eval()
        try:
            (oy, ox) = self._tile_offset(net)
            ty, tx = net.stride
            H, W = slide.shape
            # 1. low-resolution map -> per-location scale weights (the head sees the whole slide once)
            lowres = self._normalise(cell_means(slide, (ty, tx))).to(sw_device)
            gh, gw = lowres.shape[1:]
            weight_map = net.scale_weights(lowres[None])[0]  # [D, gh, gw]
            apsm = net.average_patch_size(weight_map, dim=0).float().cpu().numpy()  # [gh, gw]
            # 2. tissue mask -> the locations to run
            keep = np.ones((gh, gw), bool)
            if self.use_tissue_mask:
                mask, (my, mx) = tissue_mask(slide)
                keep = _cells_with_tissue(mask, (ty / my, tx / mx), (gh, gw))
            rows, cols = np.nonzero(keep)
            centers = np.stack([rows * ty + ty // 2, cols * tx + tx // 2], 1)
            # 3. stream batches of locations into a disk-backed label map
            with tempfile.TemporaryDirectory(prefix="wsi_fov_") as tmp:
                labels = np.memmap(Path(tmp) / "labels.u8", dtype=np.uint8, mode="w+", shape=(H, W))
                if self.output == "label" and self.background_label != 0:  # a new memmap is zero already:
                    labels[:] = self.background_label  # touching every page would make it all resident
                batches = range(0, len(centers), self.sw_batch_size)
                for start in tqdm(batches, desc=f"foveated WSI {name}", disable=not self.progress):
                    ctr = centers[start : start + self.sw_batch_size]
                    self._predict_batch(slide, net, ctr, weight_map, (oy, ox), sw_device, out_device, labels)
                labels.flush()
                # 4. outputs
                suffix = "label" if self.output == "label" else "prob"
                mpp = slide.mpp or (1.0, 1.0)
                paths = {
                    "label": write_pyramidal_tiff(
                        labels, output_dir / f"{name}_{suffix}.tif", mpp=(mpp[1], mpp[0]), tile=self.tile,
                        label=True, compression="lzw",
                    )
                }
                paths["overlay"] = write_png(self._overlay(slide, labels), output_dir / f"{name}_overlay.png")
                apsm_shown = np.where(keep, apsm, np.nan)
                paths["apsm"] = write_png(_apsm_rgb(apsm_shown, net, self.overlay_max_size), output_dir / f"{name}_apsm.png")
                del labels
            self.last_stats = {
                "locations": int(gh * gw),
                "predicted": int(len(centers)),
                "skipped": int(gh * gw - len(centers)),
                "grid": (int(gh), int(gw)),
                "mean_apsm": float(np.nanmean(apsm_shown)) if len(centers) else float("nan"),
            }
            return paths
        finally:
            net.train(was_training)

    def _predict_batch(
        self,
        slide: PyramidSlide,
        net: torch.nn.Module,
        ctr: np.ndarray,
        weight_map: torch.Tensor,
        offset: tuple[int, int],
        sw_device: torch.device,
        out_device: torch.device,
        labels: np.ndarray,
    ) -> None:
        patches = read_multiscale(
            slide, ctr, net.patch_sizes, net.output_size, padding_mode=self.padding_mode, pad_value=self.pad_value,
            device=sw_device,
        )
        ctr_t = torch.as_tensor(ctr, device=sw_device)
        weights = net.weights_at(weight_map, ctr_t)
        logits = net.forward_patches(self._normalise(patches), weights).to(out_device)
        s0 = tuple(net.patch_sizes[0])
        if tuple(logits.shape[2:]) != s0:  # prediction at output_size pixels covers s0 level-0 pixels
            logits = F.interpolate(logits.float(), size=s0, mode="bilinear", align_corners=False)
        ty, tx = net.stride
        tiles = logits[:, :, offset[0] : offset[0] + ty, offset[1] : offset[1] + tx]
        if self.output == "label":
            values = tiles.argmax(1).to(torch.uint8)
        else:
            values = (torch.softmax(tiles.float(), 1)[:, self.probability_class] * 255).round().to(torch.uint8)
        values = values.cpu().numpy()
        H, W = labels.shape
        for (cy, cx), tile in zip(ctr, values):
            r0, c0 = int(cy) - ty // 2, int(cx) - tx // 2
            r1, c1 = min(r0 + ty, H), min(c0 + tx, W)
            labels[r0:r1, c0:c1] = tile[: r1 - r0, : c1 - c0]

    def _overlay(self, slide: PyramidSlide, labels: np.ndarray) -> np.ndarray:
        """Slide thumbnail with the label colours blended in (``visualize.label_overlay``, class 0 not drawn)."""
        level = slide.level_count - 1
        for lvl in range(slide.level_count):
            if max(slide.level_shapes[lvl]) <= self.overlay_max_size:
                level = lvl
                break
        h, w = slide.level_shapes[level]
        thumb = slide.read_region(level, 0, 0, h, w).transpose(1, 2, 0)
        step = max(1, int(np.ceil(max(h, w) / self.overlay_max_size)))
        thumb = thumb[::step, ::step]
        th, tw = thumb.shape[:2]
        ry = np.minimum((np.arange(th) * step * slide.downsamples[level][0]).astype(np.int64), labels.shape[0] - 1)
        rx = np.minimum((np.arange(tw) * step * slide.downsamples[level][1]).astype(np.int64), labels.shape[1] - 1)
        lab = np.asarray(labels[ry[:, None], rx[None, :]])
        if self.output == "probability":
            color = np.array([255, 0, 0], np.float32)
            alpha = 0.6 * lab[..., None].astype(np.float32) / 255
            return (thumb * (1 - alpha) + color * alpha).round().astype(np.uint8)
        return label_overlay(thumb, lab, alpha=0.45)  # class 0 left unchanged


def _cells_with_tissue(mask: np.ndarray, cell: tuple[float, float], grid: tuple[int, int]) -> np.ndarray:
    """``[gh, gw]`` bool: grid cells (``cell`` mask pixels each, possibly fractional) touching a tissue pixel."""
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    mh, mw = mask.shape

    def bounds(n: int, size: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
        i = np.arange(n)
        lo = np.minimum(np.floor(i * size).astype(np.int64), limit - 1)
        hi = np.clip(np.ceil((i + 1) * size).astype(np.int64), lo + 1, limit)
        return lo, hi

    (r0, r1), (c0, c1) = bounds(grid[0], cell[0], mh), bounds(grid[1], cell[1], mw)
    total = integral[r1][:, c1] - integral[r0][:, c1] - integral[r1][:, c0] + integral[r0][:, c0]
    return total > 0


def _apsm_rgb(apsm: np.ndarray, net: torch.nn.Module, max_size: int) -> np.ndarray:
    """APSM ``[gh, gw]`` (NaN = skipped) → viridis RGB over the range of the network's FoVs (black where skipped),
    each cell drawn as a square of up to 16 px, with a colour bar labelled in pixels on the right."""
    sizes = net.scale_sizes.float().numpy()
    lo, hi = float(sizes.min()), float(sizes.max())
    rgb = apsm_image(np.nan_to_num(apsm, nan=lo), vmin=lo, vmax=hi)
    rgb[np.isnan(apsm)] = 0
    k = max(1, min(max_size // max(apsm.shape), 16))
    return add_colour_bar(np.kron(rgb, np.ones((k, k, 1), np.uint8)), lo, hi)
