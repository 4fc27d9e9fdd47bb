"""What the foveation WSI bundle's ``inference.json`` names beyond MONAI: slides through MONAI's engine.

A whole slide is never loaded into memory, so the pipeline's "image" is the slide *file*: preprocessing
(:class:`SlideInputd`) checks that it opens, or turns a small tile into a one-level slide; the inferer
(:class:`CohortWSIInferer`, a :class:`~monai_fovea.inferers.WSIFoveatedInferer`) streams it at the model's µm/px
from the pyramid and writes the label TIFF on the slide's level-0 grid (plus overlay and APSM); postprocessing
adds the QuPath GeoJSON (:class:`SaveGeoJSONd`) and, for tiles, the PNG mask (:class:`TileOutputsd`).

Tiles (PNG/JPEG, or a single-level TIFF up to 16 Mpx) are read with their real range: 8-bit as is, other integer
types scaled by their type's maximum (16-bit 0–65535 → 0–255), floats in [0, 1] × 255 (else taken as 0–255).
A tile has no resolution: it is taken to be at ``tile_mpp`` µm/px (default: the model's own).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_fovea.data.io import atomic_output, write_png, write_pyramidal_tiff
from monai_fovea.data.wsi import WSI_SUFFIXES, PyramidSlide
from monai_fovea.inferers.wsi_foveated import WSIFoveatedInferer

__all__ = [
    "TILE_SUFFIXES", "INPUT_SUFFIXES", "is_tile", "read_tile", "SlideInputd", "prepare_slide_batch",
    "CohortWSIInferer", "SaveGeoJSONd", "TileOutputsd",
]

TILE_SUFFIXES = (".png", ".jpg", ".jpeg")
INPUT_SUFFIXES = tuple(dict.fromkeys((*WSI_SUFFIXES, *TILE_SUFFIXES)))
_MAX_TILE_PIXELS = 16_000_000


def is_tile(path: str | os.PathLike) -> bool:
    """PNG/JPEG, or a single-level TIFF of at most 16 Mpx: segmented as an in-memory tile; other files are slides.

    Raises:
        ValueError: naming the file, when a TIFF cannot be parsed.
    """
    name = str(path).lower()
    if name.endswith(TILE_SUFFIXES):
        return True
    if name.endswith((".tif", ".tiff")):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return len(series.levels) == 1 and int(np.prod(series.shape[:2])) <= _MAX_TILE_PIXELS
        except Exception as exc:
            raise ValueError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    return False


def read_tile(path: str | os.PathLike) -> np.ndarray:
    """A tile as ``uint8 [H, W, 3]`` RGB with its real range (rule in the module docstring).

    Raises:
        ValueError: naming the file: unreadable, not 2D grey/RGB(A), or non-finite values.

    Example:
        >>> read_tile("tile16.png").dtype  # doctest: +SKIP
        dtype('uint8')
    """
    try:
        if str(path).lower().endswith((".tif", ".tiff")):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as img:  # no convert(): PIL's "RGB"/"L" conversion clips 16-bit grey to 255
                mode = img.mode
                arr = np.asarray(img.convert("RGB") if mode in ("P", "CMYK", "LA", "PA", "YCbCr") else img)
            if mode.startswith("I;16") or (mode == "I" and arr.size and 0 <= arr.min() and arr.max() <= 65535):
                arr = arr.astype(np.uint16)  # PIL opens 16-bit grey PNGs as int32 "I" on some versions
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, -1)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"{path}: expected a grey or RGB(A) image [H, W(, 3|4)], got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.integer):
        return (arr.astype(np.float64) * (255.0 / np.iinfo(arr.dtype).max)).round().clip(0, 255).astype(np.uint8)
    arr = arr.astype(np.float64)
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise ValueError(f"{path}: {bad} pixel values are NaN or infinite")
    scale = 255.0 if arr.max() <= 1.0 else 1.0
    return (arr * scale).round().clip(0, 255).astype(np.uint8)


class SlideInputd(MapTransform):
    """Check that a slide opens (``d[key]`` stays its path), or turn a tile into a one-level slide at ``tile_mpp``
    µm/px in a hidden temporary folder of the output folder (``d["tile_dir"]``; removed by :class:`TileOutputsd`,
    or by the next run if this one is killed).

    Raises:
        ValueError: naming the file when it cannot be opened by ``backend`` or read as a tile.

    Example:
        >>> SlideInputd("image", tile_mpp=0.499)({"image": "slide.svs", "stem": "slide", "output_dir": "out"})  # doctest: +SKIP
    """

    def __init__(self, keys: KeysCollection = "image", backend: str = "openslide", tile_mpp: float = 0.5) -> None:
        super().__init__(keys)
        self.backend, self.tile_mpp = backend, float(tile_mpp)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            path = str(d[key])
            d["source"] = path
            if is_tile(path):
                rgb = read_tile(path)
                tile_dir = Path(str(d["output_dir"])) / f".{d['stem']}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                tile_dir.mkdir(parents=True)
                write_pyramidal_tiff(rgb, tile_dir / f"{d['stem']}.tif", mpp=self.tile_mpp, tile=256, levels=1,
                                     compression="lzw")
                d[key], d["tile_dir"] = str(tile_dir / f"{d['stem']}.tif"), str(tile_dir)
            else:
                try:
                    PyramidSlide(path, self.backend).close()
                except Exception as exc:
                    raise ValueError(f"{path}: cannot be opened as a slide by {self.backend} "
                                     f"({type(exc).__name__}: {exc})") from exc
                d["tile_dir"] = ""
        return d


def prepare_slide_batch(batchdata: dict, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> tuple:
    """MONAI ``prepare_batch`` for slides: the whole batch dict is the inferer's input (files, not tensors)."""
    return batchdata, None


class CohortWSIInferer(WSIFoveatedInferer):
    """:class:`~monai_fovea.inferers.WSIFoveatedInferer` called by MONAI's engine with a batch of slide items
    (``{"image": [paths], "stem": [...], "output_dir": [...], "tile_dir": [...]}``): each slide is segmented into
    its output folder (a tile into its temporary folder) and the written paths are returned as a batch.

    Example:
        >>> CohortWSIInferer(mpp=0.499, sw_batch_size=32)(batch, network)  # doctest: +SKIP
        {'label': ['out/a_label.tif'], 'overlay': ['out/a_overlay.png'], 'apsm': ['out/a_apsm.png']}
    """

    def __call__(self, slide: Any, network: torch.nn.Module, output_dir: Any = None, name: str | None = None) -> Any:  # type: ignore[override]
        if not isinstance(slide, Mapping):
            return super().__call__(slide, network, output_dir, name)
        results: dict[str, list[str]] = {}
        for path, stem, out, tile_dir in zip(slide["image"], slide["stem"], slide["output_dir"], slide["tile_dir"]):
            for k, v in super().__call__(path, network, tile_dir or out, name=stem).items():
                results.setdefault(k, []).append(str(v))
        return results  # collated like a batch (a list per key), so MONAI's decollation gives one dict per slide


class SaveGeoJSONd(MapTransform):
    """Write ``<stem>.geojson``: the label TIFF's regions as QuPath annotations in level-0 pixels
    (:func:`monai_fovea.data.geojson.label_tiff_to_geojson`, streamed band by band).

    Args:
        keys: key of the inferer's output dict (``{"label": path, ...}``).
        class_names: label → QuPath class name (``{1: "tissue", 2: "nuclei"}``; JSON string keys accepted).
        enabled: ``False`` skips it (the bundle's ``--write_geojson false``: polygonising is the slowest output,
            ~20 s for the 6.6 Mpx sample slide on one CPU core).
    """

    def __init__(self, keys: KeysCollection = "pred", class_names: Mapping[Any, str] | None = None,
                 simplify_tolerance: float = 0.5, enabled: bool = True) -> None:
        super().__init__(keys)
        self.class_names = {int(k): str(v) for k, v in (class_names or {}).items()}
        self.simplify_tolerance = simplify_tolerance
        self.enabled = enabled

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai_fovea.data.geojson import label_tiff_to_geojson

        d = dict(data)
        if not self.enabled:
            return d
        for key in self.keys:
            target = Path(str(d["output_dir"])) / f"{d['stem']}.geojson"
            d["geojson_file"] = str(label_tiff_to_geojson(d[key]["label"], target, self.class_names,
                                                          simplify_tolerance=self.simplify_tolerance))
        return d


class TileOutputsd(MapTransform):
    """For a tile: ``<stem>_mask.png`` (labels) from the temporary label TIFF, the overlay and APSM PNGs moved to
    the output folder, the temporary folder removed. For a slide: the written files recorded as ``*_file``."""

    def __init__(self, keys: KeysCollection = "pred") -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import tifffile

        d = dict(data)
        for key in self.keys:
            paths = {k: Path(v) for k, v in d[key].items()}
            if not d.get("tile_dir"):
                d.update({f"{k}_file": str(v) for k, v in paths.items()})
                continue
            out = Path(str(d["output_dir"]))
            d["mask_file"] = str(write_png(tifffile.imread(paths["label"]), out / f"{d['stem']}_mask.png"))
            for name in ("overlay", "apsm"):
                with atomic_output(out / paths[name].name) as tmp:
                    shutil.copyfile(paths[name], tmp)
                d[f"{name}_file"] = str(out / paths[name].name)
            shutil.rmtree(str(d["tile_dir"]), ignore_errors=True)
        return d
