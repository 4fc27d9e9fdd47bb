"""A slide-sized label map written band by band to disk and turned into a pyramidal TIFF in bounded memory.

:class:`WSIFoveatedInferer` predicts locations in raster order, so the level-0 label map is complete one band of
rows (one row of locations) at a time. :class:`BandedLabelMap` keeps only the current band in memory, appends each
finished band to a raw ``uint8`` file with a plain ``write`` (no memory map: the pages of a written memory map
stay in the process's resident set, so a map the size of the slide would make peak memory grow with the slide),
and :meth:`BandedLabelMap.write_tiff` streams that file into the same tiled pyramidal TIFF as
:func:`monai_fovea.data.io.write_pyramidal_tiff` (``label=True``: lossless, level ``k`` is ``level0[::2**k, ::2**k]``),
one row of tiles at a time. Peak memory: one band of rows plus one row of tiles, whatever the slide's size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from monai_fovea.data.io import _auto_levels, atomic_output, pyramid_level_shapes

__all__ = ["BandedLabelMap"]


class BandedLabelMap:
    """``[H, W]`` uint8 map filled band by band, top to bottom, backed by a raw file.

    Args:
        path: the raw file (created; removed by the caller, e.g. inside a temporary folder).
        shape: ``(H, W)`` of the map.
        fill: value of pixels no band write covers.

    Example:
        >>> m = BandedLabelMap("/tmp/labels.u8", (4, 3))  # doctest: +SKIP
        >>> m.start_band(0, 2); m.band[:] = 1; m.start_band(2, 4); m.finish()  # doctest: +SKIP
        >>> m.rows([0, 3])  # doctest: +SKIP
        array([[1, 1, 1], [0, 0, 0]], dtype=uint8)
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int], fill: int = 0) -> None:
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        self.fill = int(fill)
        self._file = open(self.path, "wb+")  # noqa: SIM115 (closed by finish/close)
        self._written = 0  # rows on disk
        self.top = 0  # first row of the band in memory
        self.band = np.empty((0, self.shape[1]), np.uint8)

    def start_band(self, top: int, bottom: int) -> np.ndarray:
        """Write the current band (and fill any rows between it and ``top``), then start rows ``[top, bottom)``.

        Returns:
            the new band ``[bottom - top, W]`` (filled with ``fill``); write predictions into it.

        Raises:
            ValueError: ``top`` is above rows already written (bands must come in order).
        """
        if top < self.top + len(self.band):
            raise ValueError(f"bands must come top to bottom: row {top} is above row {self.top + len(self.band)}")
        self._flush_band()
        self._fill_to(top)
        self.top = top
        self.band = np.full((max(0, min(bottom, self.shape[0]) - top), self.shape[1]), self.fill, np.uint8)
        return self.band

    def _flush_band(self) -> None:
        if len(self.band):
            self._file.write(np.ascontiguousarray(self.band).data)
            self._written = self.top + len(self.band)
        self.band = np.empty((0, self.shape[1]), np.uint8)

    def _fill_to(self, row: int) -> None:
        chunk = max(1, (1 << 22) // max(1, self.shape[1]))
        end = min(row, self.shape[0])
        while self._written < end:
            n = min(chunk, end - self._written)
            self._file.write(np.full((n, self.shape[1]), self.fill, np.uint8).data)
            self._written += n

    def finish(self) -> None:
        """Write the last band and fill the remaining rows: the file then holds the whole map."""
        self._flush_band()
        self._fill_to(self.shape[0])
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def rows(self, index: np.ndarray | list[int], step: int = 1) -> np.ndarray:
        """``[len(index), ceil(W / step)]``: rows ``index`` of the finished map, every ``step``-th column."""
        w = self.shape[1]
        out = np.empty((len(index), -(-w // step)), np.uint8)
        for i, r in enumerate(index):
            self._file.seek(int(r) * w)
            out[i] = np.frombuffer(self._file.read(w), np.uint8)[::step]
        return out

    def _level_tiles(self, k: int, tile: int) -> Iterator[np.ndarray]:
        """Tiles of level ``k`` (``level0[::2**k, ::2**k]``) in row-major order, edge tiles zero-padded."""
        step = 2**k
        h, w = self.shape
        lh, lw = -(-h // step), -(-w // step)
        for t0 in range(0, lh, tile):
            t1 = min(lh, t0 + tile)
            if step == 1:
                self._file.seek(t0 * w)
                block = np.frombuffer(self._file.read((t1 - t0) * w), np.uint8).reshape(t1 - t0, w)
            else:
                block = self.rows(range(t0 * step, t1 * step, step), step)
            for c0 in range(0, lw, tile):
                out = np.zeros((tile, tile), np.uint8)
                part = block[:, c0 : c0 + tile]
                out[: part.shape[0], : part.shape[1]] = part
                yield out

    def write_tiff(self, path: str | os.PathLike, mpp: tuple[float, float], tile: int = 256, compression: str = "lzw") -> Path:
        """The finished map as the tiled pyramidal label TIFF :func:`write_pyramidal_tiff` writes, atomically.

        Args:
            path: output ``.tif``.
            mpp: level-0 ``(mpp_x, mpp_y)`` in µm per pixel.
            tile: tile edge (multiple of 16).
            compression: tifffile compression name (lossless; the map holds labels).
        """
        import tifffile

        h, w = self.shape
        levels = _auto_levels(h, w, tile)
        mpp_x, mpp_y = float(mpp[0]), float(mpp[1])
        bigtiff = h * w * 4 // 3 > 2**32 - 2**28
        target = Path(path).expanduser()
        with atomic_output(target) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
            for k, (lh, lw) in enumerate(pyramid_level_shapes(h, w, levels)):
                tw.write(
                    self._level_tiles(k, tile),
                    shape=(lh, lw),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    compression=compression,
                    photometric="minisblack",
                    subfiletype=1 if k else 0,
                    resolution=(1e4 / mpp_x * lw / w, 1e4 / mpp_y * lh / h),
                    resolutionunit="CENTIMETER",
                    metadata=None,
                    software="monai_fovea",
                )
        return target
