"""MONAI ``ImageReader`` for (pyramidal) TIFF files on tifffile: :class:`TiffFileReader`.

MONAI's ``LoadImage`` reads TIFF only through ITK (not a dependency here) or PIL (8-bit oriented, one level, no
physical size). :class:`TiffFileReader` reads any level of a tiled pyramidal TIFF (the files of
:func:`monai_fovea.data.io.write_pyramidal_tiff`, Aperio SVS, OME-TIFF, plain TIFF), keeps the file's dtype
(uint16 and float TIFFs keep their range), and puts the pixel size in micrometres into the metadata and the affine,
so ``Spacingd`` can bring the image to a model's µm/px and ``Invertd`` back.

Use it like any MONAI reader::

    LoadImage(reader=TiffFileReader(level=1))
    LoadImaged(["image", "label"], reader=TiffFileReader)           # the class: constructed with LoadImaged's kwargs
    LoadImaged("image", reader="TiffFileReader", level=1)          # by name, once this module is imported
    LoadImaged("image", reader="monai_fovea.data.readers.TiffFileReader")  # dotted path: no import needed (configs)

Importing this module adds ``"tifffilereader"`` to MONAI's ``monai.transforms.io.array.SUPPORTED_READERS`` (that is
what makes the name work), at the *lowest* priority: ``LoadImage()`` without a reader still prefers every MONAI
reader that claims a file (ITK, when installed, claims every file) and falls back to this one for TIFF.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data.image_reader import ImageReader, _copy_compatible_dict, _stack_images
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, ensure_tuple

__all__ = ["TiffFileReader", "TIFF_SUFFIXES", "tiff_mpp"]

#: Suffixes :meth:`TiffFileReader.verify_suffix` accepts (tifffile reads all of these TIFF variants).
TIFF_SUFFIXES: tuple[str, ...] = ("tif", "tiff", "svs", "ndpi")

PathLike = str | os.PathLike

_UNIT_UM = {2: 25_400.0, 3: 10_000.0}  # TIFF ResolutionUnit: 2 = inch, 3 = centimetre, in µm


def _rational(value: Any) -> float:
    if isinstance(value, tuple):
        num, den = value
        return float(num) / float(den) if den else 0.0
    return float(value)


def _resolution_mpp(page: Any) -> tuple[float, float] | None:
    """``(mpp_y, mpp_x)`` from a page's XResolution / YResolution / ResolutionUnit tags (inch or cm)."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF default: inch
    if unit not in _UNIT_UM:  # 1 = no absolute unit
        return None
    rx, ry = _rational(tags["XResolution"].value), _rational(tags["YResolution"].value)
    if rx <= 0 or ry <= 0:
        return None
    mpp_x, mpp_y = _UNIT_UM[unit] / rx, _UNIT_UM[unit] / ry
    # tifffile writes 1 pixel per unit when no resolution was given: that is no physical size
    if rx == 1.0 and ry == 1.0:
        return None
    return mpp_y, mpp_x


def tiff_mpp(tif: Any) -> tuple[float, float] | None:
    """Level-0 pixel size ``(mpp_y, mpp_x)`` in µm of an open ``tifffile.TiffFile``, or ``None``.

    Sources, in order: an Aperio description (``... | MPP = 0.499 | ...``, what OpenSlide reports for SVS); the
    first page's resolution tags when their unit is inch or centimetre (OpenSlide's ``generic-tiff`` rule; what
    :func:`monai_fovea.data.io.write_pyramidal_tiff` writes); OME-XML ``PhysicalSizeX/Y`` in µm.

    Example:
        >>> import tifffile
        >>> with tifffile.TiffFile(samples.fetch("cmu_slide")["image"]) as tif:  # doctest: +SKIP
        ...     tiff_mpp(tif)
        (0.499, 0.499)
    """
    from monai_fovea.data.wsi import _aperio_mpp

    aperio = _aperio_mpp(tif)
    if aperio is not None:
        return aperio[1], aperio[0]
    tags = _resolution_mpp(tif.pages[0])
    if tags is not None:
        return tags
    ome = getattr(tif, "ome_metadata", None)
    if ome:
        import re

        size = {a: re.search(rf'PhysicalSize{a}="([0-9.eE+-]+)"', ome) for a in "XY"}
        units = {a: re.search(rf'PhysicalSize{a}Unit="([^"]+)"', ome) for a in "XY"}
        if size["X"] and size["Y"] and all(u is None or u.group(1) in ("µm", "um", "micron") for u in units.values()):
            return float(size["Y"].group(1)), float(size["X"].group(1))
    return None


class TiffFileReader(ImageReader):
    """Read one level of a (pyramidal) TIFF with tifffile, with its pixel size in µm, for MONAI's ``LoadImage``.

    Args:
        level: pyramid level to read (0 = full resolution). A level the file does not have is an error naming the
            file and the number of levels it has.
        series: tifffile series (0 = the main image; Aperio SVS keep thumbnail/label/macro in later series).
        channel_dim: the channel axis of the returned array. ``None`` (default): from the file — the samples axis
            of RGB(A)/multi-sample pages (last for interleaved, first for planar TIFFs), none for grayscale/labels
            (``EnsureChannelFirst`` then adds one). An int overrides it.
        reverse_indexing: ``False`` (default): spatial axes in array order (rows, cols) = (y, x), as MONAI's
            ``WSIReader`` and NumPy. ``True``: (x, y), as MONAI's ``PILReader``/``ITKReader`` default.
        kwargs: accepted and ignored, so ``LoadImage(reader=TiffFileReader, **other_readers_kwargs)`` works.

    ``get_data`` returns the level as a NumPy array of the file's dtype (uint8, uint16, float32, ...) and the
    metadata: ``spacing`` (µm per pixel along each spatial axis, absent when the file has no physical size;
    level ``k`` has the level-0 size times its downsample) with ``spacing_unit`` = ``"micrometer"``, ``affine`` (the spacing on the diagonal, so
    ``MetaTensor.pixdim`` and ``Spacingd`` see µm; 1 per pixel without a physical size), ``level``,
    ``level_count``, ``level_shapes`` (``[H, W]`` per level), ``spatial_shape``, ``original_channel_dim``.

    Example:
        >>> from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
        >>> from monai_fovea.data import samples
        >>> from monai_fovea.data.readers import TiffFileReader
        >>> load = Compose([LoadImaged("image", reader=TiffFileReader(level=1)), EnsureChannelFirstd("image")])
        >>> img = load({"image": samples.fetch("cmu_slide")["image"]})["image"]  # doctest: +SKIP
        >>> tuple(img.shape), img.pixdim.tolist()  # doctest: +SKIP
        ((3, 1484, 1110), [0.998, 0.998])
    """

    def __init__(
        self,
        level: int = 0,
        series: int = 0,
        channel_dim: int | None = None,
        reverse_indexing: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if int(level) != level or level < 0:
            raise ValueError(f"TiffFileReader: level must be a non-negative int, got {level!r}")
        self.level = int(level)
        self.series = int(series)
        self.channel_dim = channel_dim
        self.reverse_indexing = reverse_indexing
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Whether every name ends in one of :data:`TIFF_SUFFIXES` (``.tif``, ``.tiff``, ``.svs``, ``.ndpi``).

        Example:
            >>> TiffFileReader().verify_suffix(["a.tif", "b.ome.tiff"]), TiffFileReader().verify_suffix("a.png")
            (True, False)
        """
        return is_supported_format(filename, TIFF_SUFFIXES)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        """Open the file(s) (``tifffile.TiffFile``; nothing is decoded yet).

        Raises:
            ValueError: a file that tifffile cannot open (the message names it).
        """
        import tifffile

        opened = []
        for name in ensure_tuple(data):
            path = Path(name).expanduser()
            try:
                tif = tifffile.TiffFile(path)
                opened.append(tif)
                if len(tif.pages) == 0 or len(tif.series) == 0:  # tifffile only warns about a broken first IFD
                    raise ValueError("no image pages")
            except Exception as exc:
                for tif in opened:
                    tif.close()
                raise ValueError(f"TiffFileReader: cannot read {str(path)!r} as a TIFF: {exc}") from exc
        return opened if len(opened) > 1 else opened[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Decode the chosen level of each opened file (closing it) and return ``(array, metadata)``.

        Several files are stacked along the channel axis (a new first axis when they have none), as MONAI's
        readers do; their spatial shapes must agree.

        Raises:
            ValueError: the level or series does not exist, or the file cannot be decoded (the message names it).
        """
        arrays: list[np.ndarray] = []
        meta: dict = {}
        for tif in ensure_tuple(img):
            try:
                data, header = self._read_level(tif)
            finally:
                tif.close()
            arrays.append(data)
            _copy_compatible_dict(header, meta)
        return _stack_images(arrays, meta), meta

    def _read_level(self, tif: Any) -> tuple[np.ndarray, dict]:
        name = str(tif.filehandle.path) if tif.filehandle.path else str(tif.filename)
        if not 0 <= self.series < len(tif.series):
            raise ValueError(f"TiffFileReader: series={self.series} does not exist in {name!r} ({len(tif.series)} series)")
        series = tif.series[self.series]
        levels = series.levels
        if self.level >= len(levels):
            raise ValueError(f"TiffFileReader: level={self.level} does not exist in {name!r} ({len(levels)} levels)")
        chosen = levels[self.level]
        try:
            data = np.asarray(chosen.asarray())
        except Exception as exc:
            raise ValueError(f"TiffFileReader: cannot decode level {self.level} of {name!r}: {exc}") from exc
        axes = chosen.axes.upper()
        channel_axes = [i for i, a in enumerate(axes) if a in "SC"]
        if len(channel_axes) > 1:  # e.g. a multi-channel stack of RGB pages: one channel axis
            data = np.moveaxis(data, channel_axes, range(-len(channel_axes), 0))
            data = data.reshape(*data.shape[: -len(channel_axes)], -1)
            channel = -1
        elif channel_axes:
            channel = channel_axes[0]
        else:
            channel = None
        spatial = [i for i in range(data.ndim) if i != (channel % data.ndim if channel is not None else None)]
        if self.reverse_indexing and len(spatial) >= 2:
            a, b = spatial[-2], spatial[-1]  # (y, x) -> (x, y)
            data = np.swapaxes(data, a, b)
        if self.channel_dim is not None:
            if channel is None:
                raise ValueError(f"TiffFileReader: channel_dim={self.channel_dim} given, but {name!r} has no channel axis")
            data = np.moveaxis(data, channel, self.channel_dim)
            channel = self.channel_dim
        spatial_shape = [data.shape[i] for i in range(data.ndim) if channel is None or i != channel % data.ndim]

        level_shapes = [tuple(int(s) for s, a in zip(lv.shape, lv.axes.upper()) if a not in "SC") for lv in levels]
        mpp0 = tiff_mpp(tif) if self.series == 0 else None
        spacing = None
        if mpp0 is not None and len(level_shapes[0]) >= 2:
            from monai_fovea.data.wsi import _snap

            (h0, w0), (h, w) = level_shapes[0][-2:], level_shapes[self.level][-2:]
            # the integer downsample the pyramid was built with (a 2967-row level 0 has a 1484-row level 1: 2x)
            yx = [mpp0[0] * _snap(h0, h), mpp0[1] * _snap(w0, w)]
            spacing = np.asarray(yx[::-1] if self.reverse_indexing else yx, dtype=np.float64)
            if len(spatial_shape) > 2:  # a z-stack: no physical z size in TIFF tags
                spacing = np.concatenate([np.ones(len(spatial_shape) - 2), spacing])
        nsp = len(spatial_shape)
        affine = np.eye(nsp + 1)
        if spacing is not None:
            affine[np.arange(nsp), np.arange(nsp)] = spacing
        header = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(spatial_shape),
            # -1 for interleaved samples (as PILReader), 0 for planar ones; EnsureChannelFirst moves it to 0
            MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel" if channel is None else (
                -1 if channel % data.ndim == data.ndim - 1 else int(channel)
            ),
            "level": self.level,
            "level_count": len(levels),
            "level_shapes": [list(s) for s in level_shapes],
            "dtype": str(data.dtype),
        }
        if spacing is not None:  # absent (not None) without a physical size, so batches collate
            header["spacing"] = spacing
            header["spacing_unit"] = "micrometer"
        return data, header


def _register_by_name() -> None:
    """Add ``"tifffilereader"`` to MONAI's reader table at the lowest auto-selection priority (first in order)."""
    from monai.transforms.io import array as io_array

    table = io_array.SUPPORTED_READERS
    if table.get("tifffilereader") is TiffFileReader:
        return
    items = [(k, v) for k, v in table.items() if k != "tifffilereader"]
    table.clear()
    table["tifffilereader"] = TiffFileReader
    table.update(items)


_register_by_name()
