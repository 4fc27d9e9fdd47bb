"""Foveated inference over a whole-slide image, streamed from the slide pyramid with bounded memory.

:class:`WSIFoveatedInferer` runs a :class:`monai_fovea.networks.FoveatedSegmenter` on every location of a slide's
low-resolution grid (one location per ``stride`` cell, ``stride`` = the network's, by default its smallest field
of view, i.e. non-overlapping tiles of the predicted region — what the authors' inference does in practice):

1. the low-resolution map (mean colour per cell, :func:`monai_fovea.data.wsi.cell_means`) is read band by band
   from a coarse pyramid level and goes once through the foveation head → scale weights per location;
2. an optional tissue mask (Otsu on the HSV saturation of a low level) drops glass-only locations;
3. the remaining locations are processed ``sw_batch_size`` at a time in raster order: their multi-scale
   patches are read from the pyramid (:func:`monai_fovea.data.wsi.read_multiscale`, one region per scale per
   batch, each scale from its cheapest level; only the scales whose weight is non-zero somewhere in the batch,
   so ``fixed`` and ``hard`` modes read one scale), blended with the weights, segmented, and the predicted tiles
   are written into the current band of rows of the label map. Reads run ahead of the network in
   ``read_workers`` threads (decoding releases the GIL), so reading overlaps the network's compute;
4. finished bands go to a raw file on disk (:class:`monai_fovea.data.label_stream.BandedLabelMap`), which is then
   streamed into a tiled pyramidal TIFF with the slide's size and resolution (the layout of
   :func:`monai_fovea.data.io.write_pyramidal_tiff`), plus a PNG overlay on a slide thumbnail and the APSM
   (average patch size map, Σ_d f_d·s_d per location) as a PNG.

Peak memory is a few batches of patches, one band of label rows and the low-resolution maps — flat in the slide
size up to those ≥ 64×-smaller maps (measured: ``benchmarks/wsi_throughput.py``). The label map lives on disk, in
a hidden temporary folder of the output folder (removed when done; a killed run's is removed by the next bundle
run). ``self.last_stats["seconds"]`` says where the time went (reading, network, writing).

Resolution: with ``mpp`` (the network's µm/px) the network runs at its own resolution whatever the slide was
scanned at (0.25 µm/px at 40×, 0.5 at 20×). All geometry — the location grid and ``stride``, the FoVs
``patch_sizes``, the low-resolution cells, the tissue-mask cells — is in *model* pixels; one model pixel covers
``factor = mpp / slide_mpp`` level-0 pixels, and every read is mapped onto level 0 and served from the pyramid (a
64-px FoV of a 0.5 µm/px model on a 0.25 µm/px slide is 128 level-0 px, read from the 2× level with no resize;
fractional level-0 geometry is resampled at its exact position, ``read_multiscale(subpixel=True)``). The label map
is still written on the slide's level-0 grid, each level-0 pixel taking the label of the model pixel its centre
falls in (nearest), batch by batch into the disk-backed map.

Note on cost (no measurement behind it, only counting): the number of locations, network calls and pyramid reads
follows the *model*-resolution size of the slide, so a 40× slide run at a 20× model's ``mpp`` costs about what its
20× scan would at factor 1, a quarter of running it at level 0 — provided the pyramid has the 2× level (the reads
then decode as many pixels as at factor 1); without it every region is decoded at 4× the pixels and shrunk.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from monai_fovea.data.io import write_png
from monai_fovea.data.label_stream import BandedLabelMap
from monai_fovea.data.wsi import PyramidSlide, cell_means, read_multiscale, tissue_mask
from monai_fovea.inferers.foveated import region_starts
from monai_fovea.visualize import add_colour_bar, apsm_image, label_overlay

__all__ = ["WSIFoveatedInferer"]

_OUTPUTS = ("label", "probability")
_UNIT: tuple[float, float] = (1.0, 1.0)


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
        mpp: the network's resolution in µm per pixel (what it was trained at). ``None`` (default): run at the
            slide's level-0 resolution, whatever it is (the behaviour before this argument existed). Otherwise
            the network sees the slide at ``mpp`` — see "Resolution rule" below.
        default_mpp: level-0 µm/px assumed for slides whose files carry no resolution (``PyramidSlide.mpp`` is
            ``None``: e.g. a plain tiled TIFF, or a PNG converted without metadata); also the resolution written
            into such a slide's label TIFF. ``None`` (default): such a slide with ``mpp`` set is an error, since
            guessing 0.25 or 0.5 would silently halve or double every structure the network sees.
        mpp_rtol: relative tolerance within which ``factor`` is snapped to the nearest integer ``k`` (or ``1/k``),
            default 1%. Slides of one nominal magnification report slightly different µm/px (0.499 and 0.5 are
            both "20×"): a 0.2% rescale changes no structure's size that matters but resamples every pixel (on
            the sample slide it moves the nuclei DSC against the unresampled run to 0.93), while an integer factor
            keeps whole-pixel geometry (``factor == 1`` reproduces ``mpp=None`` bit for bit; ``2`` reads the
            pyramid's 2× level pixel for pixel). ``0`` disables snapping.
        read_workers: threads reading the next batches' patches while the network runs on the current one
            (``read_workers + 1`` batches are read ahead at most). ``0`` reads in the calling thread. ``None``
            (default): 1 when the network runs on a GPU or torch uses fewer threads than there are CPU cores, else 0
            — a reader thread beside torch's own threads on every core slows the network down more than the
            overlap saves (measured with 2 torch threads on 2 cores, ``benchmarks/wsi_throughput.py``). Results
            do not depend on it. Reads of a ``tifffile`` slide are serialised (its file handle is shared).

    Resolution rule:
        ``factor = mpp / slide_mpp`` per axis (level-0 pixels per model pixel; ``slide_mpp`` from the slide's
        metadata, else ``default_mpp``), snapped as described for ``mpp_rtol``. Model pixel ``i`` covers level-0
        pixels ``[i * factor, (i + 1) * factor)``. The location grid, ``stride``, ``patch_sizes``, the
        low-resolution cells and the tissue-mask cells are in model pixels; a FoV of ``s`` model pixels is read as
        ``s * factor`` level-0 pixels centred on the same point (from the cheapest pyramid level, then resized to
        ``output_size``, :func:`monai_fovea.data.wsi.read_multiscale`; at its exact fractional position when that
        is not whole level-0 pixels), and the low-resolution cells are ``stride * factor`` level-0 pixels
        (fractional allowed, :func:`monai_fovea.data.wsi.cell_means`). The label (or probability) map is written on the slide's level-0 grid with the slide's resolution: level-0
        pixel ``r`` takes model pixel ``floor((r + 0.5) / factor)`` (nearest), tile by tile into the disk-backed
        map, so no model-resolution map is ever held. ``self.last_stats`` records ``mpp``, ``slide_mpp``
        (``(y, x)``), ``mpp_source`` (``"slide"``, ``"default_mpp"`` or ``None``) and ``factor`` (``(y, x)``).

    Example:
        >>> inferer = WSIFoveatedInferer(sw_batch_size=16, backend="tifffile")  # doctest: +SKIP
        >>> paths = inferer("slide.tif", net, output_dir="out")  # {'label': ..., 'overlay': ..., 'apsm': ...}
        >>> # a network trained at 0.499 µm/px, on 40x (0.25 µm/px) and 20x slides alike:
        >>> inferer = WSIFoveatedInferer(mpp=0.499, default_mpp=0.25)  # doctest: +SKIP
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
        mpp: float | None = None,
        default_mpp: float | None = None,
        mpp_rtol: float = 0.01,
        read_workers: int | None = None,
    ) -> None:
        for arg, value in (("mpp", mpp), ("default_mpp", default_mpp)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{arg} must be a positive number of µm per pixel or None, got {value!r}")
        if not 0 <= mpp_rtol < 0.5:
            raise ValueError(f"mpp_rtol must be in [0, 0.5), got {mpp_rtol!r}")
        if read_workers is not None and read_workers < 0:
            raise ValueError(f"read_workers must be >= 0, got {read_workers}")
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
        self.mpp = mpp
        self.default_mpp = default_mpp
        self.mpp_rtol = mpp_rtol
        self.read_workers = read_workers
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

    def _resolution(self, slide: PyramidSlide) -> tuple[tuple[float, float], tuple[float, float] | None, str | None]:
        """``(factor, slide_mpp, source)``: level-0 px per model px ``(y, x)``, the slide's level-0 µm/px
        ``(y, x)`` (``None`` when unknown) and where it came from (``"slide"``, ``"default_mpp"``, ``None``).

        Raises:
            ValueError: ``mpp`` is set but neither the slide nor ``default_mpp`` gives its resolution.
        """
        slide_mpp, source = None, None
        # a zero or NaN resolution (a placeholder some writers store) is as unknown as a missing one
        if slide.mpp is not None and all(math.isfinite(m) and m > 0 for m in slide.mpp):
            slide_mpp, source = (float(slide.mpp[0]), float(slide.mpp[1])), "slide"
        elif self.default_mpp is not None:
            slide_mpp, source = (float(self.default_mpp), float(self.default_mpp)), "default_mpp"
        if self.mpp is None:
            return _UNIT, slide_mpp, source
        if slide_mpp is None:
            raise ValueError(
                f"slide {slide.path!r} has no resolution (µm/px) in its metadata, so it cannot be brought to the "
                f"network's mpp={self.mpp}: pass WSIFoveatedInferer(..., default_mpp=<level-0 µm/px the slide was "
                f"scanned at>, e.g. 0.25 for 40x or 0.5 for 20x), or mpp=None to run at the slide's own pixels"
            )
        factor = (_snap_factor(self.mpp / slide_mpp[0], self.mpp_rtol), _snap_factor(self.mpp / slide_mpp[1], self.mpp_rtol))
        return factor, slide_mpp, source

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
        t_start = time.perf_counter()
        timing = {"read_wait": 0.0, "network": 0.0, "write_bands": 0.0}
        try:
            (oy, ox) = self._tile_offset(net)
            factor, slide_mpp, mpp_source = self._resolution(slide)
            ty, tx = net.stride
            H, W = slide.shape
            # 1. low-resolution map -> per-location scale weights (the head sees the whole slide once); a model
            # cell of `stride` model px is stride * factor level-0 px (integer cells keep the exact factor-1 path)
            cell = (ty, tx) if factor == _UNIT else (ty * factor[0], tx * factor[1])
            lowres = self._normalise(cell_means(slide, cell)).to(sw_device)
            gh, gw = lowres.shape[1:]
            weight_map = net.scale_weights(lowres[None])[0]  # [D, gh, gw]
            apsm = net.average_patch_size(weight_map, dim=0).float().cpu().numpy()  # [gh, gw]
            # 2. tissue mask -> the locations to run
            keep = np.ones((gh, gw), bool)
            if self.use_tissue_mask:
                mask, (my, mx) = tissue_mask(slide)
                keep = _cells_with_tissue(mask, (ty * factor[0] / my, tx * factor[1] / mx), (gh, gw))
            rows, cols = np.nonzero(keep)
            centers = np.stack([rows * ty + ty // 2, cols * tx + tx // 2], 1)  # model px
            timing["lowres_and_mask"] = time.perf_counter() - t_start
            # per-location weights; a batch reads only the scales weighted somewhere in it (one in fixed/hard mode)
            weights = net.weights_at(weight_map, torch.as_tensor(centers, device=sw_device))
            used = (weights != 0).cpu().numpy()
            # 3. stream batches of locations into bands of the label map
            # the label map lives beside the outputs, hidden, named like atomic_output's temporaries: removed on
            # success or error, and by the next bundle run if this process is killed (-9)
            output_dir.mkdir(parents=True, exist_ok=True)
            prefix = f".{name}_labelmap.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            fill = self.background_label if self.output == "label" else 0
            with tempfile.TemporaryDirectory(prefix=prefix, dir=output_dir) as tmp:
                labels = BandedLabelMap(Path(tmp) / "labels.u8", (H, W), fill=fill)
                try:
                    starts = list(range(0, len(centers), self.sw_batch_size))
                    reads = _Prefetcher(
                        lambda i: self._read_batch(slide, net, centers[i : i + self.sw_batch_size],
                                                   used[i : i + self.sw_batch_size], factor, sw_device),
                        starts, _read_workers(self.read_workers, sw_device), serialise=slide.backend == "tifffile",
                    )
                    with reads:
                        for start in tqdm(starts, desc=f"foveated WSI {name}", disable=not self.progress):
                            t0 = time.perf_counter()
                            patches, active = reads.next()
                            t1 = time.perf_counter()
                            stop = start + self.sw_batch_size
                            values = self._predict(net, patches, weights[start:stop], active, (oy, ox), out_device)
                            t2 = time.perf_counter()
                            self._write_tiles(labels, centers[start:stop], values, (ty, tx), factor)
                            t3 = time.perf_counter()
                            timing["read_wait"] += t1 - t0
                            timing["network"] += t2 - t1
                            timing["write_bands"] += t3 - t2
                        timing["read"] = reads.busy
                    t0 = time.perf_counter()
                    labels.finish()
                    # 4. outputs
                    suffix = "label" if self.output == "label" else "prob"
                    mpp = slide_mpp or _UNIT  # the slide's own level-0 grid and resolution, whatever the model's
                    paths = {"label": labels.write_tiff(output_dir / f"{name}_{suffix}.tif", mpp=(mpp[1], mpp[0]), tile=self.tile)}
                    t1 = time.perf_counter()
                    paths["overlay"] = write_png(self._overlay(slide, labels), output_dir / f"{name}_overlay.png")
                    apsm_shown = np.where(keep, apsm, np.nan)
                    paths["apsm"] = write_png(_apsm_rgb(apsm_shown, net, self.overlay_max_size), output_dir / f"{name}_apsm.png")
                    timing["write_tiff"] = t1 - t0
                    timing["overlay_apsm"] = time.perf_counter() - t1
                finally:
                    labels.close()
            timing["total"] = time.perf_counter() - t_start
            self.last_stats = {
                "locations": int(gh * gw),
                "predicted": int(len(centers)),
                "skipped": int(gh * gw - len(centers)),
                "grid": (int(gh), int(gw)),
                "mean_apsm": float(np.nanmean(apsm_shown)) if len(centers) else float("nan"),
                "mpp": self.mpp,
                "slide_mpp": slide_mpp,
                "mpp_source": mpp_source,
                "factor": factor,
                "seconds": timing,
            }
            return paths
        finally:
            net.train(was_training)

    def _read_batch(
        self,
        slide: PyramidSlide,
        net: torch.nn.Module,
        ctr: np.ndarray,
        used: np.ndarray,
        factor: tuple[float, float],
        sw_device: torch.device,
    ) -> tuple[torch.Tensor, list[int]]:
        """Patches ``[N, D', C, *output_size]`` of the ``D'`` scales weighted somewhere in the batch (``used``
        ``[N, D]``), and their indices."""
        active = [d for d in range(used.shape[1]) if used[:, d].any()]
        ctr0, sizes0, subpixel = ctr, net.patch_sizes, False
        if factor != _UNIT:
            ctr0, sizes0, subpixel = _level0_fovs(ctr, net, factor)
        patches = read_multiscale(
            slide, ctr0, [sizes0[d] for d in active], net.output_size, padding_mode=self.padding_mode,
            pad_value=self.pad_value, device=sw_device, subpixel=subpixel,
        )
        return patches, active

    def _predict(
        self,
        net: torch.nn.Module,
        patches: torch.Tensor,
        weights: torch.Tensor,
        active: list[int],
        offset: tuple[int, int],
        out_device: torch.device,
    ) -> np.ndarray:
        """uint8 label (or probability) tiles ``[N, ty, tx]`` of the cells of a batch."""
        x = self._normalise(patches)
        # the used scales only: the others have zero weight (they add exact zeros)
        logits = net.forward_patches(x, weights[:, active], scales=active)
        logits = logits.to(out_device)
        s0 = tuple(net.patch_sizes[0])
        if tuple(logits.shape[2:]) != s0:  # prediction at output_size pixels covers s0 model pixels
            logits = F.interpolate(logits.float(), size=s0, mode="bilinear", align_corners=False)
        ty, tx = net.stride
        tiles = logits[:, :, offset[0] : offset[0] + ty, offset[1] : offset[1] + tx]
        if self.output == "label":
            values = tiles.argmax(1).to(torch.uint8)
        else:
            values = (torch.softmax(tiles.float(), 1)[:, self.probability_class] * 255).round().to(torch.uint8)
        return values.cpu().numpy()

    @staticmethod
    def _write_tiles(
        labels: BandedLabelMap, ctr: np.ndarray, values: np.ndarray, stride: tuple[int, int], factor: tuple[float, float]
    ) -> None:
        """Write the tiles of the cells centred at ``ctr`` (model px, raster order) into the label map's bands
        (level 0): model pixel ``i`` → level-0 pixels ``[i * factor, (i + 1) * factor)`` (nearest)."""
        (ty, tx), (H, W) = stride, labels.shape
        for (cy, cx), tile in zip(ctr, values):
            r0, c0 = int(cy) - ty // 2, int(cx) - tx // 2  # the location's cell, model px
            if factor == _UNIT:
                top, bottom = r0, min(r0 + ty, H)
                rows, cols = slice(0, bottom - top), slice(c0, min(c0 + tx, W))
                if top != labels.top or not len(labels.band):
                    labels.start_band(top, bottom)
                labels.band[rows, cols] = tile[: bottom - top, : cols.stop - c0]
                continue
            (y0, y1), ri = _nearest_span(r0, ty, factor[0], H)
            (x0, x1), ci = _nearest_span(c0, tx, factor[1], W)
            if y1 <= y0:
                continue
            if y0 != labels.top or not len(labels.band):
                labels.start_band(y0, y1)
            if x1 > x0:
                labels.band[:, x0:x1] = tile[ri[:, None], ci[None, :]]

    def _overlay(self, slide: PyramidSlide, labels: BandedLabelMap) -> np.ndarray:
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
        lab = labels.rows(ry)[:, rx]
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


def _snap_factor(factor: float, rtol: float) -> float:
    """``factor`` replaced by the nearest integer ``k`` (or ``1/k`` below 1) when within ``rtol`` of it: FoVs and
    cells then are whole level-0 pixels (with the usual even sizes), and a factor 2^k reads the pyramid's own
    2^k level without resampling."""
    k = float(round(factor)) if factor >= 1 else 1.0 / round(1.0 / factor)
    return k if abs(factor / k - 1.0) <= rtol else float(factor)


def _level0_fovs(
    ctr: np.ndarray, net: torch.nn.Module, factor: tuple[float, float]
) -> tuple[np.ndarray, list[tuple[float, float]], bool]:
    """Model-px centres and FoVs → the level-0 centres and FoVs :func:`read_multiscale` takes, and whether those
    need its ``subpixel`` resampling.

    ``read_multiscale`` centres a FoV on ``c - o // 2 + o / 2`` (the centre of the ``output_size`` crop at
    ``c``); in model px that point is ``p = c_m - o // 2 + o / 2``, in level-0 px ``p * factor``, so the level-0
    centre handed over is ``p * factor + o // 2 - o / 2``, and a FoV of ``s`` model px covers ``s * factor``
    level-0 px. When every FoV and every location's first FoV pixel are whole level-0 pixels (integer factors
    such as 2, and most others with the usual power-of-2 sizes), the plain read is exact; otherwise rounding
    them would shift and rescale patches by up to half a pixel, so they are resampled at their exact geometry.
    """
    o = np.asarray(net.output_size, dtype=np.float64)
    f = np.asarray(factor, dtype=np.float64)
    t = np.asarray(net.stride, dtype=np.float64)
    ctr0 = (np.asarray(ctr, dtype=np.float64) - o // 2 + o / 2) * f + o // 2 - o / 2
    sizes0 = [(float(s[0]) * factor[0], float(s[1]) * factor[1]) for s in net.patch_sizes]
    # locations sit at t // 2 + k * t: their first pixels are all whole iff the first one is and t * f is
    firsts = [(t // 2 - o // 2 + o / 2) * f - np.asarray(s0) / 2 for s0 in sizes0]
    values = [*np.ravel(sizes0), *(t * f), *np.ravel(firsts)]
    integral = all(abs(v - round(v)) < 1e-6 for v in values)
    if integral:
        return ctr0, [(round(h), round(w)) for h, w in sizes0], False
    return ctr0, sizes0, True


def _nearest_span(start: int, size: int, factor: float, limit: int) -> tuple[tuple[int, int], np.ndarray]:
    """Level-0 pixels ``[lo, hi)`` whose nearest model pixel lies in the model cell ``[start, start + size)``,
    and, per such pixel, that model pixel's index inside the cell.

    Level-0 pixel ``r`` (centre ``r + 0.5``) takes model pixel ``floor((r + 0.5) / factor)``; the bounds use the
    same integer cell edges for neighbouring cells, so cells partition level 0 with no gap or overlap.
    """
    lo = min(max(0, math.ceil(start * factor - 0.5)), limit)
    hi = min(max(lo, math.ceil((start + size) * factor - 0.5)), limit)
    idx = np.floor((np.arange(lo, hi) + 0.5) / factor).astype(np.int64) - start
    return (lo, hi), np.clip(idx, 0, size - 1)  # clip: float rounding at a cell edge


def _read_workers(requested: int | None, sw_device: torch.device) -> int:
    """``requested``, or for ``None``: 1 reader thread when it does not take a core from torch's threads (network on
    a GPU, or fewer torch threads than cores), else 0."""
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if sw_device.type != "cpu" or torch.get_num_threads() < cores else 0


class _Prefetcher:
    """Results of ``fn(item)`` for ``items`` in order, computed up to ``workers + 1`` items ahead in ``workers``
    threads (``0``: in the caller's thread, on demand). ``busy`` sums the seconds spent inside ``fn``."""

    def __init__(self, fn: Any, items: list[Any], workers: int, serialise: bool = False) -> None:
        self._fn, self._items, self._workers = fn, items, workers
        self._lock = threading.Lock() if serialise else None
        self._next = 0
        self._pending: deque[Future] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self.busy = 0.0

    def _call(self, item: Any) -> Any:
        t0 = time.perf_counter()
        try:
            if self._lock is None:
                return self._fn(item)
            with self._lock:
                return self._fn(item)
        finally:
            self.busy += time.perf_counter() - t0  # a float += from a few threads: a statistic, not a result

    def _submit(self) -> None:
        while self._pool is not None and self._next < len(self._items) and len(self._pending) <= self._workers:
            self._pending.append(self._pool.submit(self._call, self._items[self._next]))
            self._next += 1

    def __enter__(self) -> _Prefetcher:
        if self._workers > 0:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="wsi-read")
            self._submit()
        return self

    def next(self) -> Any:
        if self._pool is None:
            item = self._items[self._next]
            self._next += 1
            return self._call(item)
        result = self._pending.popleft().result()
        self._submit()
        return result

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
