"""Input listing and atomic output writers shared by the pipelines, bundles and the sample-data layer.

Every writer here is *atomic*: it writes to a temporary sibling file and renames it onto the target only when
the write finished, so an interrupted or failed run never leaves a half-written output that a later run would
take for a finished one (see :func:`atomic_output`).

Pyramidal TIFF layout (:func:`write_pyramidal_tiff`), checked with openslide 4.0.1 (openslide-bin), tifffile
2026.3 and cuCIM 26.10:

* every level is its own tiled top-level page (IFD) — level 0 first, reduced levels with ``NewSubfileType = 1``.
  OpenSlide's ``generic-tiff`` format and cuCIM read such a file as a multi-level slide; SubIFD pyramids are read
  by tifffile only (OpenSlide 4 and cuCIM then see a single level), so they are not used;
* ``XResolution``/``YResolution`` in pixels per centimetre with ``ResolutionUnit = CENTIMETER``, from which
  OpenSlide reports ``openslide.mpp-x``/``mpp-y`` and cuCIM its ``spacing()`` in micrometres;
* RGB(A) images: JPEG tiles by default (lossy); anything else (label masks, grayscale): LZW tiles (lossless).
  LZW rather than deflate because cuCIM's bundled libtiff has no deflate codec for single-channel pages
  ("AdobeDeflate compression support is not configured"), while all three readers decode LZW. OpenSlide and cuCIM
  return single-channel pages as 8-bit RGBA; labels above 255 (uint16 instance masks) are exact only via tifffile.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "list_inputs", "atomic_output", "write_nifti", "write_pyramidal_tiff", "write_png", "pyramid_level_shapes",
    "save_state_dict", "file_stem",
]

PathLike = str | os.PathLike

_GLOB_CHARS = set("*?[")


def _as_numpy(array: Any, name: str = "array") -> np.ndarray:
    """A NumPy view of ``array`` (NumPy array, torch tensor / MetaTensor, or anything ``np.asarray`` takes)."""
    if hasattr(array, "detach"):  # torch.Tensor / MetaTensor without importing torch
        array = array.detach().cpu().numpy()
    try:
        return np.asarray(array)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name}: cannot convert {type(array).__name__} to a NumPy array") from exc


def _has_suffix(path: Path, suffixes: Sequence[str] | None) -> bool:
    if not suffixes:
        return True
    name = path.name.lower()
    return any(name.endswith(s.lower() if s.startswith(".") else "." + s.lower()) for s in suffixes)


def list_inputs(path: PathLike, suffixes: Sequence[str] | str | None = None) -> list[Path]:
    """The input files named by ``path``: a file, a folder (its files, sorted) or a glob pattern (sorted).

    Args:
        path: a file; a folder (its direct, non-hidden files are listed, sorted by name); or a glob pattern
            (``*``, ``?``, ``[...]``; ``**`` matches folders recursively).
        suffixes: keep only names ending in one of these (case-insensitive, compound suffixes such as
            ``".nii.gz"`` work; the dot is optional). ``None``: keep all files.

    Returns:
        A non-empty list of paths.

    Raises:
        FileNotFoundError: naming ``path`` (and ``suffixes``) when nothing matches.

    Example:
        >>> list_inputs("data/slides", suffixes=[".tif", ".svs"])  # doctest: +SKIP
        [PosixPath('data/slides/a.svs'), PosixPath('data/slides/b.tif')]
    """
    if isinstance(suffixes, str):
        suffixes = [suffixes]
    text = os.fspath(path)
    p = Path(text).expanduser()
    if p.is_file():
        found = [p] if _has_suffix(p, suffixes) else []
    elif p.is_dir():
        found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".") and _has_suffix(f, suffixes))
    elif _GLOB_CHARS & set(text):
        found = sorted(
            Path(f) for f in _glob.glob(os.path.expanduser(text), recursive=True) if Path(f).is_file() and _has_suffix(Path(f), suffixes)
        )
    else:
        raise FileNotFoundError(f"list_inputs: path={text!r} is neither an existing file, a folder nor a glob pattern")
    if not found:
        what = f" with suffixes {list(suffixes)}" if suffixes else ""
        raise FileNotFoundError(f"list_inputs: no input files{what} match path={text!r}")
    return found


def _split_suffix(name: str) -> tuple[str, str]:
    """``"a.nii.gz" -> ("a", ".nii.gz")``; the suffix part is what writers use to pick a format."""
    lower = name.lower()
    for compound in (".nii.gz", ".ome.tiff", ".ome.tif", ".tar.gz"):
        if lower.endswith(compound):
            return name[: -len(compound)], name[-len(compound) :]
    stem, dot, ext = name.rpartition(".")
    return (stem, "." + ext) if dot and stem else (name, "")


def file_stem(path: PathLike) -> str:
    """The file name without its extension, compound ones included: the stem outputs are named after.

    Example:
        >>> file_stem("/data/case01.nii.gz"), file_stem("slide.ome.tif"), file_stem("img.png")
        ('case01', 'slide', 'img')
    """
    return _split_suffix(Path(path).name)[0]


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` on success, remove it on error.

    The temporary name is hidden (leading dot), unique, and keeps the suffix of ``path`` (so writers that pick
    the format from the extension, e.g. ``.nii.gz``, still work). Parent folders are created. If the body
    raises, the temporary file (or folder) is removed and the exception propagates: ``path`` is left as it
    was — absent, or the previous complete version. The rename is atomic on one filesystem (``os.replace``).

    Raises:
        FileNotFoundError: the body finished without creating the temporary path.

    Example:
        >>> with atomic_output("out/result.npy") as tmp:  # doctest: +SKIP
        ...     np.save(tmp, array)
    """
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    stem, suffix = _split_suffix(target.name)
    tmp = target.with_name(f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_output: nothing was written to the temporary path for {str(target)!r}")
        if tmp.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def write_nifti(array: Any, path: PathLike, affine: Any, *, dtype: Any = None) -> Path:
    """Write ``array`` as NIfTI-1 with the given voxel-to-world ``affine`` (that of the input image), atomically.

    The affine is stored as both sform and qform (code 1, scanner) when it has no shear, sform only otherwise;
    NIfTI stores it in float32, so it reads back exactly when its entries are float32-representable. Units are
    mm. ``.nii.gz`` paths are gzip-compressed (deterministically: no timestamp). Boolean arrays are written as
    uint8; int64 arrays as int32 when their values fit (NIfTI readers handle int64 poorly).

    Args:
        array: [X, Y, Z] (or [X, Y, Z, T/C]) array, NumPy or torch; axes in NIfTI order (i, j, k).
        path: output ``.nii`` or ``.nii.gz`` path.
        affine: 4×4 voxel-to-world (RAS+ mm) matrix.
        dtype: on-disk data type (default: that of ``array``, after the conversions above).

    Returns:
        ``Path(path)``.

    Example:
        >>> write_nifti(np.zeros((4, 4, 4), np.uint8), "mask.nii.gz", np.diag([0.5, 0.5, 1.0, 1.0]))  # doctest: +SKIP
    """
    import nibabel as nib

    data = _as_numpy(array, "array")
    aff = np.asarray(_as_numpy(affine, "affine"), dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"write_nifti: affine must be 4x4, got shape {aff.shape}")
    if data.ndim < 2:
        raise ValueError(f"write_nifti: array must have at least 2 dimensions, got shape {data.shape}")
    name = Path(path).name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise ValueError(f"write_nifti: path must end in .nii or .nii.gz, got {os.fspath(path)!r}")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if dtype is None and data.dtype in (np.int64, np.uint64):
        info = np.iinfo(np.int32)
        if data.size == 0 or (data.min() >= info.min and data.max() <= info.max):
            data = data.astype(np.int32)
    img = nib.Nifti1Image(data, aff, dtype=dtype if dtype is not None else data.dtype)
    img.set_sform(aff, code=1)
    try:
        img.set_qform(aff, code=1, strip_shears=False)
    except Exception:  # shear: not representable as a qform
        img.set_qform(None, code=0)
    img.header.set_xyzt_units("mm", "sec")
    target = Path(path).expanduser()
    with atomic_output(target) as tmp:
        nib.save(img, tmp)
    return target


def pyramid_level_shapes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """(H, W) of each pyramid level: level ``k`` is ``ceil(H / 2**k) × ceil(W / 2**k)``.

    Example:
        >>> pyramid_level_shapes(2967, 2220, 3)
        [(2967, 2220), (1484, 1110), (742, 555)]
    """
    return [(-(-height // 2**k), -(-width // 2**k)) for k in range(levels)]


def _auto_levels(height: int, width: int, tile: int) -> int:
    n = 1
    while max(-(-height // 2 ** (n - 1)), -(-width // 2 ** (n - 1))) > tile:
        n += 1
    return n


def _downsample2(level: np.ndarray, nearest: bool) -> np.ndarray:
    """One 2× reduction: ``level[::2, ::2]`` (nearest, labels) or the rounded mean of each 2×2 block (images,
    edge rows/columns replicated for odd sizes). Integer arithmetic only, so the result is deterministic."""
    if nearest:
        return np.ascontiguousarray(level[::2, ::2])
    h, w = level.shape[:2]
    pad = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (level.ndim - 2)
    x = np.pad(level, pad, mode="edge") if (h % 2 or w % 2) else level
    if np.issubdtype(level.dtype, np.integer):
        acc = x.astype(np.int64)
        s = acc[0::2, 0::2] + acc[1::2, 0::2] + acc[0::2, 1::2] + acc[1::2, 1::2]
        return ((s + 2) // 4).astype(level.dtype)
    acc = x.astype(np.float64)
    s = acc[0::2, 0::2] + acc[1::2, 0::2] + acc[0::2, 1::2] + acc[1::2, 1::2]
    return (s / 4).astype(level.dtype)


def write_pyramidal_tiff(
    array: Any,
    path: PathLike,
    mpp: float | tuple[float, float],
    tile: int = 256,
    levels: int | None = None,
    compression: str | None = "auto",
    *,
    quality: int = 90,
    label: bool | None = None,
) -> Path:
    """Write a tiled pyramidal TIFF that OpenSlide, tifffile and cuCIM open as a multi-level slide, atomically.

    Level ``k`` is ``ceil(H / 2**k) × ceil(W / 2**k)`` (see :func:`pyramid_level_shapes`), each a separate tiled
    page with its resolution tags (layout and reader notes in the module docstring). Reduced levels of images are
    2×2 block means of the level above; those of label masks are nearest (``level[::2, ::2]``), so label values
    stay exact at every level.

    Args:
        array: [H, W] (grayscale / label mask) or [H, W, C] (C = 3 RGB, 4 RGBA), uint8 or uint16 (NumPy/torch).
        path: output ``.tif``/``.tiff`` path.
        mpp: micrometres per pixel at level 0 (one value, or ``(mpp_x, mpp_y)``).
        tile: tile edge in pixels (multiple of 16).
        levels: number of levels; ``None``: halve until the level fits in one tile.
        compression: ``"auto"`` — ``"jpeg"`` for uint8 RGB(A) images, ``"lzw"`` otherwise (lossless; never JPEG
            for label masks) — or any tifffile compression name (``"jpeg"``, ``"lzw"``, ``"zlib"``, ``None``).
        quality: JPEG quality (1–100), used with JPEG only.
        label: treat ``array`` as a label mask (nearest downsampling, no JPEG). Default: True for [H, W] arrays
            of an integer type, False otherwise.

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: bad shape, dtype, ``mpp``, ``tile``, ``levels``, or JPEG requested for a label mask.

    Example:
        >>> write_pyramidal_tiff(mask, "mask.tif", mpp=0.5, levels=3)  # doctest: +SKIP
    """
    import tifffile

    data = _as_numpy(array, "array")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[2] not in (1, 3, 4)):
        raise ValueError(f"write_pyramidal_tiff: array must be [H, W] or [H, W, 1|3|4], got shape {data.shape}")
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    if data.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_pyramidal_tiff: array dtype must be uint8 or uint16, got {data.dtype}")
    mpp_x, mpp_y = (float(mpp), float(mpp)) if np.isscalar(mpp) else (float(mpp[0]), float(mpp[1]))
    if not (mpp_x > 0 and mpp_y > 0):
        raise ValueError(f"write_pyramidal_tiff: mpp must be positive, got {mpp!r}")
    if tile <= 0 or tile % 16:
        raise ValueError(f"write_pyramidal_tiff: tile must be a positive multiple of 16, got {tile}")
    h, w = data.shape[:2]
    if levels is None:
        levels = _auto_levels(h, w, tile)
    if levels < 1 or min(h, w) < 2 ** (levels - 1):
        raise ValueError(f"write_pyramidal_tiff: levels={levels} is invalid for an image of {h}×{w} px")
    if label is None:
        label = data.ndim == 2 and np.issubdtype(data.dtype, np.integer)
    rgb = data.ndim == 3
    if compression == "auto":
        compression = "jpeg" if (rgb and data.dtype == np.uint8 and not label) else "lzw"
    if compression is not None and str(compression).lower() == "jpeg" and label:
        raise ValueError("write_pyramidal_tiff: JPEG is lossy and not allowed for a label mask (use compression='lzw')")
    compressionargs = {"level": int(quality)} if compression is not None and str(compression).lower() == "jpeg" else None
    photometric = "rgb" if rgb else "minisblack"
    extrasamples = ("unassalpha",) if rgb and data.shape[2] == 4 else None
    bigtiff = data.nbytes * 4 // 3 > 2**32 - 2**28

    target = Path(path).expanduser()
    with atomic_output(target) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
            level = np.ascontiguousarray(data)
            for k in range(levels):
                if k:
                    level = _downsample2(level, nearest=label)
                lh, lw = level.shape[:2]
                # resolution of this level = level-0 resolution scaled by the actual size ratio
                res = (1e4 / mpp_x * lw / w, 1e4 / mpp_y * lh / h)
                tw.write(
                    level,
                    tile=(tile, tile),
                    compression=compression,
                    compressionargs=compressionargs,
                    photometric=photometric,
                    extrasamples=extrasamples,
                    subfiletype=1 if k else 0,
                    resolution=res,
                    resolutionunit="CENTIMETER",
                    metadata=None,
                    software="monai_fovea",
                )
    return target


def write_png(array: Any, path: PathLike) -> Path:
    """Write ``array`` as PNG, atomically.

    Args:
        array: [H, W] uint8 / uint16 (grayscale), [H, W, 3] uint8 (RGB) or [H, W, 4] uint8 (RGBA); bool is written
            as uint8 0/255. NumPy or torch.
        path: output ``.png`` path.

    Returns:
        ``Path(path)``.

    Example:
        >>> write_png(np.zeros((8, 8, 3), np.uint8), "overlay.png")  # doctest: +SKIP
    """
    from PIL import Image

    data = _as_numpy(array, "array")
    if data.dtype == bool:
        data = data.astype(np.uint8) * 255
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        if data.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"write_png: a 2-D array must be uint8 or uint16, got {data.dtype}")
    elif data.ndim == 3 and data.shape[2] in (3, 4):
        if data.dtype != np.uint8:
            raise ValueError(f"write_png: an RGB(A) array must be uint8, got {data.dtype}")
    else:
        raise ValueError(f"write_png: array must be [H, W], [H, W, 3] or [H, W, 4], got shape {data.shape}")
    img = Image.fromarray(np.ascontiguousarray(data))
    target = Path(path).expanduser()
    with atomic_output(target) as tmp:
        img.save(tmp, format="PNG", compress_level=6)
    return target


def save_state_dict(module: Any, path: PathLike) -> Path:
    """Save ``module``'s weights as a plain state dict (CPU tensors, DDP wrapper removed), atomically.

    This is the format of the bundles' ``models/model.pt`` (read with ``torch.load(..., weights_only=True)``); writing
    through :func:`atomic_output` means a run killed mid-save keeps the previous checkpoint intact.

    Example:
        >>> save_state_dict(torch.nn.Linear(2, 1), "models/model.pt")  # doctest: +SKIP
    """
    import torch  # torch is only needed here; the rest of this module writes images

    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        module = module.module
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
    return Path(path).expanduser()
