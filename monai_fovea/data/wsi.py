"""Pyramid-aware multi-scale reading from whole-slide images (foveation on WSI).

A foveated network needs, for every location, D concentric patches whose fields of view (FoV, in level-0
pixels) differ but which are all resampled to the same ``output_size``. Reading a 4000-px FoV from level 0 to
shrink it to 256 px decodes 250× more pixels than needed; a slide pyramid already holds the image at coarser
resolutions. :func:`read_multiscale` therefore reads each scale from the coarsest level that still has at least
the output resolution (:func:`select_level`) and resizes only the small remaining factor (antialiased, batched).

The slide is opened through MONAI's :class:`monai.data.WSIReader` (backends ``openslide``, ``tifffile``,
``cucim``) and wrapped in :class:`PyramidSlide`, which reads *level* regions with its own clamping and padding,
because the backends disagree at the edges (OpenSlide pads out-of-slide reads with 0, MONAI's tifffile reader
truncates and fails on negative locations) and MONAI's tifffile reader decodes the whole level for every patch
(``TiffFile.asarray(level)``): for tifffile, regions are read tile-wise through tifffile's zarr store instead.
Nothing here ever decodes a whole level-0 image.

Coordinates: centres and FoVs are in level-0 pixels, ``(row, col)`` = ``(y, x)``, with the geometry of
:func:`monai_fovea.transforms.foveation.functional.multiscale_patches`: the scale whose FoV equals ``output_size``
is MONAI's ``SpatialCrop(roi_center=c, roi_size=output_size)`` (first pixel ``c - o // 2``), and every scale is
concentric with it. A region read from level ``L`` (downsample ``k``) starts on that level's pixel grid: exact
when the FoV's first level-0 pixel is a multiple of ``k``, else rounded by at most half a level pixel. With
``read_multiscale(subpixel=True)`` nothing is rounded: centres and FoVs may be fractional (a network run at another
µm/px than level 0) and each patch is resampled at its exact position.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PyramidSlide", "select_level", "read_multiscale", "cell_means", "tissue_mask", "WSI_SUFFIXES"]

WSI_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".svslide", ".bif")
_BACKENDS = ("openslide", "tifffile", "cucim")
_PADDING_MODES = ("zeros", "constant", "border")


def _pair(value: Any, name: str) -> tuple[int, int]:
    """``int`` or ``(h, w)`` → ``(h, w)`` of positive ints, else a ValueError naming ``name``."""
    seq = (value, value) if np.isscalar(value) else tuple(value)
    if len(seq) != 2 or any(int(v) != v or int(v) <= 0 for v in seq):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return int(seq[0]), int(seq[1])


def _snap(size0: int, size: int) -> float:
    """A level's downsample along one axis: the integer ``k`` the pyramid was built with when the level's size is
    ``size0 / k`` rounded down or up, else the plain ratio."""
    k = max(1, round(size0 / size))
    return float(k) if size0 // k <= size <= -(-size0 // k) else size0 / size


def _aperio_mpp(tif: Any) -> tuple[float, float] | None:
    """``(mpp, mpp)`` from an Aperio SVS description (``... | MPP = 0.499 | ...``), which MONAI's tifffile reader
    does not parse; ``None`` when absent."""
    for field in str(getattr(tif.pages[0], "description", "")).split("|"):
        key, _, value = field.partition("=")
        if key.strip() == "MPP":
            try:
                return float(value), float(value)
            except ValueError:
                return None
    return None


class PyramidSlide:
    """A whole-slide image opened through MONAI's ``WSIReader``, read level region by level region.

    Args:
        path: slide file (any format the backend reads: ``.svs``, tiled pyramidal ``.tif``, ...).
        backend: ``"openslide"``, ``"tifffile"`` or ``"cucim"`` (MONAI ``WSIReader`` backends).

    Attributes:
        level_count: number of pyramid levels.
        level_shapes: ``[(H, W), ...]`` per level.
        downsamples: ``[(dy, dx), ...]`` per level, ``level-0 size / level size`` per axis.
        mpp: ``(mpp_y, mpp_x)`` of level 0 in µm per pixel (``None`` when the file has no resolution).

    Example:
        >>> with PyramidSlide("slide.tif", backend="openslide") as slide:  # doctest: +SKIP
        ...     region = slide.read_region(level=1, top=-8, left=0, height=64, width=64)  # [3, 64, 64] uint8
    """

    def __init__(self, path: str | os.PathLike, backend: str = "openslide") -> None:
        from monai.data import WSIReader

        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"PyramidSlide: path={os.fspath(path)!r} is not a file")
        self.path = os.fspath(path)
        self.backend = backend
        self.reader = WSIReader(backend=backend, channel_dim=0)
        self.wsi = self.reader.read(self.path)
        if backend == "tifffile":
            # MONAI counts every page of the file as a level (an SVS's thumbnail, label and macro images too):
            # use the levels of the main image series
            self.level_shapes = [tuple(int(v) for v in lvl.shape[:2]) for lvl in self.wsi.series[0].levels]
        else:
            count = int(self.reader.get_level_count(self.wsi))
            self.level_shapes = [tuple(int(v) for v in self.reader.get_size(self.wsi, lvl)) for lvl in range(count)]
        self.level_count = len(self.level_shapes)
        h0, w0 = self.level_shapes[0]
        # Level sizes are rounded (2967 px -> 1483 or 1484 px), so their ratio (2.0007, 1.9993) misstates the
        # 2x the pyramid was built with and would shift far rows by a pixel: snap near-integer ratios.
        self.downsamples = [(_snap(h0, h), _snap(w0, w)) for h, w in self.level_shapes]
        try:
            mpp = self.reader.get_mpp(self.wsi, 0)
            self.mpp: tuple[float, float] | None = (float(mpp[0]), float(mpp[1]))
        except Exception:  # no resolution tags: outputs are written without physical spacing
            self.mpp = None
        if self.mpp is None and backend == "tifffile":
            self.mpp = _aperio_mpp(self.wsi)
        self._zarr_levels: dict[int, Any] = {}

    # --- context manager -------------------------------------------------------------------------------------
    def close(self) -> None:
        close = getattr(self.wsi, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> PyramidSlide:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of level 0."""
        return self.level_shapes[0]

    # --- raw reads (inside the level only) -------------------------------------------------------------------
    def _tifffile_level(self, level: int):
        """The zarr array of one level (decodes only the tiles a slice touches)."""
        if level not in self._zarr_levels:
            import zarr

            # levels of the main series, not ``pages[level]``: SVS files interleave thumbnail/label pages
            self._zarr_levels[level] = zarr.open(self.wsi.series[0].aszarr(level=level), mode="r")
        return self._zarr_levels[level]

    def _read_inside(self, level: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """``[C, height, width]`` uint8 of a region lying entirely inside ``level`` (level coordinates)."""
        if self.backend == "tifffile":
            arr = np.asarray(self._tifffile_level(level)[top : top + height, left : left + width])
            if arr.ndim == 2:
                arr = arr[..., None]
            if arr.shape[-1] == 1:  # grayscale slide: RGB like the other backends
                arr = np.repeat(arr, 3, axis=-1)
            return np.ascontiguousarray(np.moveaxis(arr[..., :3], -1, 0))
        # openslide and cuCIM take level-0 locations and divide by their own (mean) downsample. Choose the
        # level-0 location that maps back onto exactly ``top``/``left``: cuCIM truncates, so round up (the
        # quotient then lies in [top, top + 1/ds)); OpenSlide renders the fractional part with sub-pixel
        # interpolation, so round to nearest (off by at most 1/4 level pixel for a ~2× pyramid).
        ds = float(self.reader.get_downsample_ratio(self.wsi, level))
        if self.backend == "cucim":
            loc = (math.ceil(top * ds - 1e-6), math.ceil(left * ds - 1e-6))
        else:
            loc = (round(top * ds), round(left * ds))
        patch, _ = self.reader.get_data(self.wsi, location=loc, size=(height, width), level=level, mode="RGB")
        patch = np.asarray(patch)
        return np.ascontiguousarray(patch[:3])

    # --- public region read ----------------------------------------------------------------------------------
    def read_region(
        self,
        level: int,
        top: int,
        left: int,
        height: int,
        width: int,
        padding_mode: str = "zeros",
        pad_value: float = 0,
    ) -> np.ndarray:
        """``[3, height, width]`` uint8 region of ``level`` starting at level pixel ``(top, left)``.

        Parts outside the level are padded here, identically for every backend: ``"zeros"``, ``"constant"``
        (``pad_value``) or ``"border"`` (nearest edge pixel). Only the part inside the level is decoded.

        Raises:
            ValueError: bad ``level``, size or ``padding_mode``.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"level must be in [0, {self.level_count}), got {level}")
        if height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive, got {(height, width)}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        lh, lw = self.level_shapes[level]
        top, left = int(top), int(left)
        if padding_mode == "border":
            # decode the in-level part grown to at least one pixel, then index with clamped coordinates
            r0, c0 = min(max(top, 0), lh - 1), min(max(left, 0), lw - 1)
            r1, c1 = max(min(top + height, lh), r0 + 1), max(min(left + width, lw), c0 + 1)
            inside = self._read_inside(level, r0, c0, r1 - r0, c1 - c0)
            rows = np.clip(np.arange(top, top + height), r0, r1 - 1) - r0
            cols = np.clip(np.arange(left, left + width), c0, c1 - 1) - c0
            return np.ascontiguousarray(inside[:, rows[:, None], cols[None, :]])
        value = 0 if padding_mode == "zeros" else pad_value
        out = np.full((3, height, width), value, dtype=np.uint8)
        r0, c0 = max(top, 0), max(left, 0)
        r1, c1 = min(top + height, lh), min(left + width, lw)
        if r1 > r0 and c1 > c0:
            out[:, r0 - top : r1 - top, c0 - left : c1 - left] = self._read_inside(level, r0, c0, r1 - r0, c1 - c0)
        return out


def select_level(downsamples: Sequence[tuple[float, float]], patch_size: tuple[int, int], output_size: tuple[int, int]) -> int:
    """The pyramid level that decodes the fewest pixels while keeping at least the output resolution.

    That is the coarsest level whose downsample (per axis) is at most ``patch_size / output_size`` (downsamples
    as snapped by :class:`PyramidSlide`). Level 0 when the patch is upsampled.

    Example:
        >>> select_level([(1, 1), (2, 2), (4, 4)], patch_size=(1024, 1024), output_size=(256, 256))
        2
        >>> select_level([(1, 1), (2, 2), (4, 4)], patch_size=(700, 700), output_size=(256, 256))
        1
    """
    need_y, need_x = patch_size[0] / output_size[0], patch_size[1] / output_size[1]
    best = 0
    for lvl, (dy, dx) in enumerate(downsamples):
        if dy <= need_y * (1 + 1e-9) and dx <= need_x * (1 + 1e-9) and dy * dx > downsamples[best][0] * downsamples[best][1]:
            best = lvl
    return best


def _level_boxes(
    centers: np.ndarray, patch: tuple[int, int], out: tuple[int, int], ds: tuple[float, float]
) -> tuple[np.ndarray, tuple[int, int]]:
    """Level-pixel top-left corners ``[N, 2]`` and the common level size of the patches of one scale.

    The FoV is centred on the centre of the ``output_size`` crop at ``c`` (``c - o // 2 + (o - 1) / 2``), as in
    ``multiscale_patches``; its first level-0 pixel is then ``c - o // 2 + o / 2 - s / 2`` (an integer for even
    sizes), rounded to the level's pixel grid.
    """
    o, s = np.asarray(out, dtype=np.float64), np.asarray(patch, dtype=np.float64)
    start0 = centers - o // 2 + o / 2 - s / 2
    tops = np.floor(start0 / np.asarray(ds) + 0.5).astype(np.int64)
    size = (max(1, round(patch[0] / ds[0])), max(1, round(patch[1] / ds[1])))
    return tops, size


def read_multiscale(
    reader_or_path: PyramidSlide | str | os.PathLike,
    centers: Any,
    patch_sizes: Sequence[float | Sequence[float]],
    output_size: int | Sequence[int],
    backend: str = "openslide",
    level_selection: str = "auto",
    padding_mode: str = "zeros",
    pad_value: float = 0,
    antialias: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    merge_reads: float = 4.0,
    subpixel: bool = False,
) -> torch.Tensor:
    """D concentric multi-field-of-view patches per centre, read from a slide pyramid.

    Each scale ``d`` covers ``patch_sizes[d]`` level-0 pixels around the centre; it is read from the level chosen
    by :func:`select_level` (or level 0 with ``level_selection="base"``) and resized to ``output_size`` by one
    batched ``torch.nn.functional.interpolate`` per scale (bilinear, antialiased when shrinking). A scale that
    needs no resize (FoV equal to ``output_size`` at level 0, or an exact 2^k multiple at a 2^k level) is the
    plain crop. Edges are clamped and padded by :meth:`PyramidSlide.read_region`, so every backend pads alike.

    Args:
        reader_or_path: an open :class:`PyramidSlide` or a slide path (opened with ``backend`` and closed again).
        centers: ``[N, 2]`` (row, col) centres in level-0 pixels (numpy, torch or a list).
        patch_sizes: D FoVs in level-0 pixels, ints or ``(h, w)`` pairs (fractional with ``subpixel=True``).
        output_size: the pixel size every scale is resampled to, int or ``(h, w)``.
        backend: MONAI ``WSIReader`` backend used when a path is given.
        level_selection: ``"auto"`` (fewest decoded pixels) or ``"base"`` (always level 0: the reference
            behaviour, for comparison).
        padding_mode: ``"zeros"``, ``"constant"`` (``pad_value``) or ``"border"``.
        pad_value: fill value for ``"constant"``.
        antialias: antialias the final resize when it shrinks.
        dtype: output floating dtype (values keep the slide's 0–255 range).
        device: where the resize runs and the output lives (e.g. ``"cuda"``).
        merge_reads: per scale, read the bounding region of all patches at once when its area is at most this
            many times the summed patch areas (batches of neighbouring centres, as in inference); otherwise read
            each patch separately (scattered random centres, as in training). ``0`` disables merging.
        subpixel: resample every patch at its exact, possibly fractional, position and FoV instead of rounding its
            region to the level's pixel grid: separable linear weights (a triangle filter as wide as the shrink
            factor, i.e. antialiased like ``interpolate(..., antialias=True)``) over a region read with a margin.
            For a network run at another µm/px than level 0, whose FoVs and centres map to fractional level-0
            pixels (rounding them would shift and rescale each patch by up to half a pixel).

    Returns:
        ``Tensor[N, D, 3, *output_size]``.

    Raises:
        ValueError: bad ``centers``, ``patch_sizes``, ``output_size`` or ``level_selection``.

    Example:
        >>> x = read_multiscale("slide.tif", [[1000, 1200]], [256, 512, 1024], 256)  # doctest: +SKIP
        >>> x.shape
        torch.Size([1, 3, 3, 256, 256])
    """
    if level_selection not in ("auto", "base"):
        raise ValueError(f"level_selection must be 'auto' or 'base', got {level_selection!r}")
    out_hw = _pair(output_size, "output_size")
    if isinstance(patch_sizes, (int, np.integer)) or len(patch_sizes) == 0:
        raise ValueError(f"patch_sizes must be a non-empty sequence of FoVs, got {patch_sizes!r}")
    parse = _positive_pair if subpixel else _pair
    sizes = [parse(p, f"patch_sizes[{i}]") for i, p in enumerate(patch_sizes)]
    ctr = np.asarray(centers.detach().cpu() if isinstance(centers, torch.Tensor) else centers, dtype=np.float64)
    if ctr.shape == (2,):
        ctr = ctr[None]
    if ctr.size == 0:
        ctr = np.zeros((0, 2))
    if ctr.ndim != 2 or ctr.shape[1] != 2:
        raise ValueError(f"centers must be [N, 2] (row, col) level-0 pixels, got shape {ctr.shape}")
    slide = reader_or_path if isinstance(reader_or_path, PyramidSlide) else PyramidSlide(reader_or_path, backend)
    try:
        scales = []
        for patch in sizes:
            level = select_level(slide.downsamples, patch, out_hw) if level_selection == "auto" else 0
            if subpixel:
                scales.append(
                    _read_subpixel(slide, level, ctr, patch, out_hw, padding_mode, pad_value, antialias, merge_reads, dtype, device)
                )
                continue
            tops, (h, w) = _level_boxes(ctr, patch, out_hw, slide.downsamples[level])
            stack = _read_patches(slide, level, tops, h, w, padding_mode, pad_value, merge_reads)
            x = torch.from_numpy(stack).to(device=device, dtype=dtype)
            if (h, w) != out_hw and len(x):
                shrink = h > out_hw[0] or w > out_hw[1]
                x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False, antialias=antialias and shrink)
            scales.append(x)
        return torch.stack(scales, dim=1) if len(ctr) else torch.zeros((0, len(sizes), 3, *out_hw), dtype=dtype, device=device)
    finally:
        if slide is not reader_or_path:
            slide.close()


def _linear_weights(starts: np.ndarray, size: float, out: int, first: np.ndarray, length: int, antialias: bool) -> np.ndarray:
    """``[N, out, length]`` resampling weights along one axis: output pixel ``j`` of patch ``n`` (centre at level
    coordinate ``starts[n] + (j + 0.5) * size / out``) from the ``length`` level pixels starting at ``first[n]``.

    A triangle filter of half-width ``max(1, size / out)`` (bilinear when enlarging; widened by the shrink factor
    when shrinking, as antialiased bilinear ``interpolate`` does), normalised to sum to 1.
    """
    scale = size / out
    width = max(1.0, scale) if antialias else 1.0
    centres = starts[:, None] + (np.arange(out) + 0.5) * scale  # [N, out]
    pixels = first[:, None] + np.arange(length) + 0.5  # [N, length], pixel i spans [i, i + 1)
    w = np.clip(1.0 - np.abs(pixels[:, None, :] - centres[:, :, None]) / width, 0.0, None)
    return w / w.sum(-1, keepdims=True)


def _read_subpixel(
    slide: PyramidSlide,
    level: int,
    centers: np.ndarray,
    patch: tuple[float, float],
    out: tuple[int, int],
    padding_mode: str,
    pad_value: float,
    antialias: bool,
    merge: float,
    dtype: torch.dtype,
    device: str | torch.device | None,
) -> torch.Tensor:
    """``[N, 3, *out]``: one scale resampled at its exact fractional geometry (``read_multiscale(subpixel=True)``)."""
    o, s, ds = np.asarray(out, np.float64), np.asarray(patch, np.float64), np.asarray(slide.downsamples[level], np.float64)
    starts = (centers - o // 2 + o / 2 - s / 2) / ds  # [N, 2] level coordinates of each FoV's first edge
    size = s / ds
    reach = np.maximum(1.0, size / o) if antialias else np.ones(2)  # the filter's half-width in level pixels
    first = np.floor(starts - reach).astype(np.int64)
    length = np.ceil(size + 2 * reach).astype(np.int64) + 2  # same for every patch, covers any fractional start
    stack = _read_patches(slide, level, first, int(length[0]), int(length[1]), padding_mode, pad_value, merge)
    x = torch.from_numpy(stack).to(device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    wy = torch.from_numpy(_linear_weights(starts[:, 0], size[0], out[0], first[:, 0], int(length[0]), antialias))
    wx = torch.from_numpy(_linear_weights(starts[:, 1], size[1], out[1], first[:, 1], int(length[1]), antialias))
    wy, wx = wy.to(device=device, dtype=x.dtype), wx.to(device=device, dtype=x.dtype)
    return torch.einsum("nyh,nchw,nxw->ncyx", wy, x, wx).to(dtype)


def _read_patches(
    slide: PyramidSlide, level: int, tops: np.ndarray, h: int, w: int, padding_mode: str, pad_value: float, merge: float
) -> np.ndarray:
    """``[N, 3, h, w]`` uint8: one region read for all patches when they are close together, else one each."""
    n = len(tops)
    if n == 0:
        return np.zeros((0, 3, h, w), np.uint8)
    lo, hi = tops.min(0), tops.max(0) + (h, w)
    if n > 1 and merge > 0 and float(np.prod(hi - lo)) <= merge * n * h * w:
        region = slide.read_region(level, int(lo[0]), int(lo[1]), int(hi[0] - lo[0]), int(hi[1] - lo[1]), padding_mode, pad_value)
        rel = tops - lo
        return np.stack([region[:, r : r + h, c : c + w] for r, c in rel])
    return np.stack([slide.read_region(level, int(r), int(c), h, w, padding_mode, pad_value) for r, c in tops])


def tissue_mask(slide: PyramidSlide, max_size: int = 2048, min_saturation: float = 0.05) -> tuple[np.ndarray, tuple[float, float]]:
    """Foreground (tissue) mask of a slide from its coarsest level not larger than ``max_size`` per side.

    H&E tissue is coloured while glass is grey/white, so the mask is Otsu's threshold on the HSV saturation
    (floored at ``min_saturation`` so an all-background slide gives an empty mask, not noise), then a small
    closing and hole filling.

    Returns:
        ``(mask[h, w] bool, (dy, dx))`` — the mask and the downsample of its level relative to level 0.

    Example:
        >>> with PyramidSlide("slide.tif") as s:  # doctest: +SKIP
        ...     mask, (dy, dx) = tissue_mask(s)
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    level = slide.level_count - 1
    for lvl in range(slide.level_count):
        if max(slide.level_shapes[lvl]) <= max_size:
            level = lvl
            break
    h, w = slide.level_shapes[level]
    rgb = slide.read_region(level, 0, 0, h, w).astype(np.float32) / 255.0
    mx, mn = rgb.max(0), rgb.min(0)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    thr = max(float(threshold_otsu(sat)) if sat.max() > sat.min() else 1.0, min_saturation)
    mask = sat > thr
    # edge-padded so the closing's erosion does not eat tissue that touches the slide border
    mask = ndimage.binary_closing(np.pad(mask, 2, mode="edge"), iterations=2)[2:-2, 2:-2]
    mask = ndimage.binary_fill_holes(mask)
    return mask, slide.downsamples[level]


def cell_means(slide: PyramidSlide, cell: float | Sequence[float], band_cells: int = 16) -> torch.Tensor:
    """The slide's low-resolution map: the mean colour of every ``cell`` × ``cell`` block of level-0 pixels.

    This is the foveation head's input (``FoveatedSegmenter.lowres`` on an in-memory image). It is read from the
    coarsest level whose downsample divides ``cell``, in bands of ``band_cells`` cell rows, so memory stays
    bounded whatever the slide size; partial cells at the right/bottom edges average the pixels they hold.

    ``cell`` may be fractional (a network run at another µm/px than the slide's level 0: its ``stride`` cell then
    covers ``stride * model_mpp / slide_mpp`` level-0 pixels). Cell ``i`` then covers level-0 pixels
    ``[i * cell, (i + 1) * cell)``; it is averaged from the coarsest level holding at least
    :data:`MIN_LEVEL_PX_PER_CELL` level pixels per cell, with its bounds rounded to that level's pixel grid (so by
    at most half a level pixel, 1/16 of a cell). Integer cells keep the exact block-mean path above.

    Returns:
        float32 ``[3, ceil(H / cell_h), ceil(W / cell_w)]`` in the slide's 0–255 range.

    Example:
        >>> with PyramidSlide("slide.tif") as s:  # doctest: +SKIP
        ...     lowres = cell_means(s, 128)
    """
    cy, cx = _positive_pair(cell, "cell")
    if cy != int(cy) or cx != int(cx):
        return _fractional_cell_means(slide, (cy, cx), band_cells)
    ch, cw = int(cy), int(cx)
    level = 0
    for lvl, (dy, dx) in enumerate(slide.downsamples):
        if dy == int(dy) and dx == int(dx) and ch % int(dy) == 0 and cw % int(dx) == 0 and dy * dx >= slide.downsamples[level][0] * slide.downsamples[level][1]:
            level = lvl
    ky, kx = ch // int(slide.downsamples[level][0]), cw // int(slide.downsamples[level][1])
    lh, lw = slide.level_shapes[level]
    gh, gw = -(-slide.shape[0] // ch), -(-slide.shape[1] // cw)
    out = torch.zeros(3, gh, gw)
    for r0 in range(0, gh, band_cells):
        r1 = min(gh, r0 + band_cells)
        top, height = r0 * ky, min((r1 - r0) * ky, lh - r0 * ky)
        if height <= 0:
            continue
        band = torch.from_numpy(slide.read_region(level, top, 0, height, lw)).float()[None]
        pooled = F.avg_pool2d(band, kernel_size=(ky, kx), stride=(ky, kx), ceil_mode=True)[0]
        out[:, r0 : r0 + pooled.shape[1], : pooled.shape[2]] = pooled[:, : r1 - r0, :gw]
    return out


#: fewest level pixels per (fractional) cell when :func:`cell_means` picks the level to average from: cell bounds
#: are rounded to that level's grid, so this bounds the error to half a level pixel in 8, 1/16 of the cell
MIN_LEVEL_PX_PER_CELL = 8
_BAND_PIXELS = 1 << 22  # level pixels per band of fractional cell means (~100 MB of float64 working copies)


def _positive_pair(value: Any, name: str) -> tuple[float, float]:
    """number or ``(h, w)`` → ``(h, w)`` of positive floats, else a ValueError naming ``name``."""
    seq = (value, value) if np.isscalar(value) else tuple(value)
    if len(seq) != 2 or any(not np.isfinite(float(v)) or float(v) <= 0 for v in seq):
        raise ValueError(f"{name} must be a positive number or a pair of positive numbers, got {value!r}")
    return float(seq[0]), float(seq[1])


def _grid_count(size: int, cell: float) -> int:
    """``ceil(size / cell)`` for a fractional cell, immune to ``size / cell`` landing a rounding error above an
    integer (which would add an empty row of cells)."""
    return max(1, math.ceil(size / cell - 1e-9))


def _cell_bounds(n: int, cell: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """``[n]`` first and end (exclusive) pixels of ``n`` cells of ``cell`` pixels each (fractional), rounded to
    the pixel grid and clipped to ``[0, limit)``; every cell keeps at least one pixel."""
    i = np.arange(n + 1, dtype=np.float64)
    edges = np.floor(i * cell + 0.5).astype(np.int64)
    lo = np.minimum(edges[:-1], limit - 1)
    hi = np.clip(edges[1:], lo + 1, limit)
    return lo, hi


def _fractional_cell_means(slide: PyramidSlide, cell: tuple[float, float], band_cells: int) -> torch.Tensor:
    """:func:`cell_means` for fractional cells: area means with bounds rounded to the chosen level's grid."""
    ch, cw = cell
    level = 0
    for lvl, (dy, dx) in enumerate(slide.downsamples):
        fits = dy * MIN_LEVEL_PX_PER_CELL <= ch and dx * MIN_LEVEL_PX_PER_CELL <= cw
        if fits and dy * dx > slide.downsamples[level][0] * slide.downsamples[level][1]:
            level = lvl
    dy, dx = slide.downsamples[level]
    lh, lw = slide.level_shapes[level]
    gh, gw = _grid_count(slide.shape[0], ch), _grid_count(slide.shape[1], cw)
    r_lo, r_hi = _cell_bounds(gh, ch / dy, lh)
    c_lo, c_hi = _cell_bounds(gw, cw / dx, lw)
    c_area = (c_hi - c_lo).astype(np.float64)
    # a band is a few float64 copies of its pixels: cap its height so that a slide without a coarse level (read
    # at level 0) still streams in bounded memory
    step = max(1, min(band_cells, _BAND_PIXELS // max(1, math.ceil(ch / dy) * lw)))
    out = torch.zeros(3, gh, gw)
    for r0 in range(0, gh, step):
        r1 = min(gh, r0 + step)
        top, bottom = int(r_lo[r0:r1].min()), int(r_hi[r0:r1].max())
        band = slide.read_region(level, top, 0, bottom - top, lw).astype(np.float64)
        # separable integral sums: rows of each cell first, then its columns (float64: exact for uint8 sums)
        rows = np.pad(band.cumsum(1), ((0, 0), (1, 0), (0, 0)))
        rsum = rows[:, r_hi[r0:r1] - top] - rows[:, r_lo[r0:r1] - top]  # [3, r1 - r0, lw]
        cols = np.pad(rsum.cumsum(2), ((0, 0), (0, 0), (1, 0)))
        total = cols[:, :, c_hi] - cols[:, :, c_lo]  # [3, r1 - r0, gw]
        area = (r_hi[r0:r1] - r_lo[r0:r1]).astype(np.float64)[:, None] * c_area[None, :]
        out[:, r0:r1] = torch.from_numpy(total / area).float()
    return out
