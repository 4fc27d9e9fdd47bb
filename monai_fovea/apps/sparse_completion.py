"""Skull shape completion at full resolution with a sparse generative network (seed 002): data, training,
inference and evaluation entry points used by ``bundles/sparse_skull_completion``.

Data
----
* Real skull: the ``bone`` mask of the ``ct_head`` sample (256 x 256 x 108, 0.957 x 0.957 x 1.5 mm). Cleaning:
  only its largest 26-connected component is kept (drops ~50 small fragments: calcifications, bits of the
  head holder); no cropping -- inference runs on the whole volume at full resolution.
* Synthetic skulls: :func:`monai_fovea.data.synthetic.skull_shell` (seeded closed shells).
* Defects: :class:`~monai_fovea.transforms.RandSkullDefectd` (cube / ball / irregular on the upper half of the
  vault). Training draws fresh random defects every step from the transform's seeded random state; validation
  uses the CT skull's defects of seeds 10..13 and evaluation the defects drawn with the held-out seeds
  :data:`EVAL_SEEDS` on the CT skull, a held-out synthetic skull
  and a held-out real skull extracted from the MRI head sample (:func:`evaluation_cases`).
* Network input: the one-voxel edge shell of the defective skull; target: that shell plus the (dense) implant.

Training is the bundle's ``configs/train.json``, a MONAI ``SupervisedTrainer`` workflow; what it names beyond MONAI
(skull choice, completion target, the multi-level loss, the batch preparation) is in
:mod:`monai_fovea.apps.skull_training`.

Post-processing (as in the seed): occupied voxels minus the defective skull, binary opening, largest
26-connected component -> implant; completed skull = defective skull + implant.

Super-resolution (:func:`train_superres`, :func:`superres`): the same network refines a max-pooled,
nearest-upsampled occupancy grid to full resolution (x2; chain two calls for x4); see
``benchmarks/sparse_superres.py``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

__all__ = [
    "BUNDLE_CHANNELS",
    "EVAL_SEEDS",
    "load_ct_skull",
    "load_mri_skull_at_ct_spacing",
    "resample_mask",
    "evaluation_cases",
    "synthetic_skulls",
    "make_defect_case",
    "default_input",
    "completion_target",
    "build_network",
    "vault_region",
    "postprocess_implant",
    "complete_skull",
    "evaluate",
    "superres_input",
    "train_superres",
    "superres",
]

logger = logging.getLogger(__name__)

#: channels of the bundle's network (4 stride-2 levels): ~1 s for a whole CT skull on a CPU, 0.03 s on a GPU
BUNDLE_CHANNELS = (8, 16, 32, 32, 64)
#: defect seeds reserved for evaluation (training draws its defects from ``seed + 1000`` onwards)
EVAL_SEEDS = (0, 1, 2, 3, 4, 5)
#: voxel spacing (mm) of the CT skull
CT_SPACING = (0.957, 0.957, 1.5)
#: defect radii in voxels (in-plane 0.957 mm, through-plane 1.5 mm on the CT skull)
DEFECT_RADII = (8.0, 14.0)
_BACKGROUND_LOGIT = -20.0


def load_ct_skull() -> tuple[np.ndarray, np.ndarray]:
    """``(bool skull [X, Y, Z], affine)`` from the ``ct_head`` sample's bone mask, largest 26-component only."""
    import nibabel as nib
    from scipy import ndimage

    from monai_fovea.data import samples

    img = nib.load(str(samples.fetch("ct_head")["bone"]))
    bone = np.asarray(img.dataobj) > 0
    labels, _ = ndimage.label(bone, np.ones((3, 3, 3), bool))
    largest = np.bincount(labels.ravel())[1:].argmax() + 1
    return labels == largest, np.asarray(img.affine, dtype=np.float64)


def synthetic_skulls(seeds: Sequence[int], shape: Sequence[int] = (96, 96, 72)) -> list[np.ndarray]:
    """Bool synthetic skulls (``skull_shell``, thickness 3-7 voxels like the CT skull's vault)."""
    from monai_fovea.data.synthetic import skull_shell

    return [skull_shell(shape, seed=s, thickness=(3.0, 7.0)).astype(bool) for s in seeds]


def make_defect_case(skull: np.ndarray, seed: int, radius_range: Sequence[float] = DEFECT_RADII) -> dict[str, np.ndarray]:
    """``{"complete", "defective", "implant"}`` bool ``[X, Y, Z]``: one seeded synthetic defect cut into ``skull``."""
    from monai_fovea.transforms import RandSkullDefectd

    cut = RandSkullDefectd("complete", radius_range=radius_range).set_random_state(seed=int(seed))
    d = cut({"complete": skull[None].astype(np.uint8)})
    return {"complete": skull, "defective": d["defective"][0] > 0, "implant": d["implant"][0] > 0}


def default_input(cache_dir: str | os.PathLike | None = None, seed: int = EVAL_SEEDS[0]) -> str:
    """Path of the bundle's default input: the ``ct_head`` skull with the held-out defect ``seed``, written once
    (with its ground-truth implant beside it, ``*_implant.nii.gz``) into ``cache_dir`` (default: the sample data
    folder's ``sparse_skull_completion/``)."""
    from monai_fovea.data import samples
    from monai_fovea.data.io import write_nifti

    folder = Path(cache_dir) if cache_dir is not None else samples.data_dir() / "sparse_skull_completion"
    path = folder / f"ct_head_defective_seed{seed}.nii.gz"
    implant_path = folder / f"ct_head_defective_seed{seed}_implant.nii.gz"
    if not (path.is_file() and implant_path.is_file()):
        skull, affine = load_ct_skull()
        case = make_defect_case(skull, seed)
        write_nifti(case["implant"].astype(np.uint8), implant_path, affine)
        write_nifti(case["defective"].astype(np.uint8), path, affine)
    return str(path)


def completion_target(defective: np.ndarray, implant: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_shell [1, 1, *S] float, target_coords [N, 1 + ndim] int32)``: the network's input (edge shell of the
    defective skull) and its training target (that shell plus the implant) as batch-0 coordinates."""
    from monai_fovea.transforms import EdgeShell

    shell = EdgeShell()(torch.from_numpy(np.ascontiguousarray(defective[None])).float())
    target = (shell[0] > 0) | torch.from_numpy(np.ascontiguousarray(implant))
    coords = torch.nonzero(target).int()
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], 1).contiguous()
    return shell[None], coords


def build_network(channels: Sequence[int] = BUNDLE_CHANNELS, spatial_dims: int = 3) -> torch.nn.Module:
    """The bundle's network: ``SparseAsDense(SparseCompletionNet(channels))`` with background logit -20."""
    from monai_fovea.networks import SparseAsDense, SparseCompletionNet

    return SparseAsDense(SparseCompletionNet(spatial_dims, 1, channels), threshold=0.0, background=_BACKGROUND_LOGIT)


def vault_region(defective: np.ndarray, vault_fraction: float = 0.5, margin: int = 16, superior_axis: int = -1) -> np.ndarray:
    """Bool mask of the slab where AutoImplant-style defects can be: the upper ``vault_fraction`` of the skull's
    extent along ``superior_axis`` (as in ``RandSkullDefect``), extended down by ``margin`` voxels (defect radius)."""
    along = np.nonzero(np.asarray(defective).any(axis=tuple(a for a in range(defective.ndim) if a != superior_axis % defective.ndim)))[0]
    region = np.zeros(defective.shape, dtype=bool)
    if len(along):
        cut = int(np.floor(along.max() - vault_fraction * (along.max() - along.min()))) - margin
        index = [slice(None)] * defective.ndim
        index[superior_axis] = slice(max(cut, 0), None)
        region[tuple(index)] = True
    return region


def postprocess_implant(occupied: np.ndarray | torch.Tensor, defective: np.ndarray,
                        vault_fraction: float | None = None) -> np.ndarray:
    """Implant from the predicted occupancy: minus the defective skull, binary opening, largest 26-component.

    With ``vault_fraction`` set, predictions outside :func:`vault_region` are dropped first (uses the prior that
    defects are on the cranial vault; the seed's post-processing is ``vault_fraction=None``)."""
    from monai.transforms import KeepLargestConnectedComponent
    from scipy import ndimage

    occ = np.asarray(torch.as_tensor(occupied).cpu().numpy(), dtype=bool)
    if vault_fraction is not None:
        occ = occ & vault_region(np.asarray(defective), vault_fraction)
    implant = ndimage.binary_opening(occ & ~np.asarray(defective, dtype=bool))
    if not implant.any():
        return implant
    keep = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, connectivity=implant.ndim)
    return np.asarray(keep(torch.from_numpy(implant[None].astype(np.uint8)))[0]).astype(bool)


def complete_skull(model: torch.nn.Module, defective: np.ndarray, device: str | torch.device = "cpu",
                   inferer: Any = None, vault_fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(implant, completed_skull)`` bool arrays for one defective skull ``[X, Y, Z]``, whole volume at full
    resolution through a :class:`~monai_fovea.inferers.SparseInferer` (tiled only over its memory budget)."""
    from monai_fovea.inferers import SparseInferer

    defective = np.asarray(defective) > 0
    shell, _ = completion_target(defective, np.zeros_like(defective))
    inferer = inferer or SparseInferer(memory_budget_voxels=2_000_000, overlap=32)
    model.eval()
    with torch.no_grad():
        logits = inferer(shell.to(device), model)
    implant = postprocess_implant(torch.as_tensor(logits)[0, 0] > 0, defective, vault_fraction)
    return implant, defective | implant


def _crop_box(case: dict[str, np.ndarray], size: Sequence[int], rng: np.random.Generator,
              around_defect: bool = True) -> tuple[slice, ...]:
    """A ``size`` box (inside the volume) around the implant, or around a random skull voxel."""
    if around_defect:
        pos = np.argwhere(case["implant"])
        centre = pos.mean(0) if len(pos) else np.array(case["implant"].shape) / 2
    else:
        pos = np.argwhere(case["complete"][::4, ::4, ::4]) * 4  # a coarse pick is random enough and much cheaper
        centre = pos[rng.integers(len(pos))].astype(float)
    box = []
    for c, s, n in zip(centre, size, case["implant"].shape):
        s = min(int(s), n)
        lo = int(round(c - s / 2 + rng.integers(-s // 6, s // 6 + 1)))
        lo = min(max(lo, 0), n - s)
        box.append(slice(lo, lo + s))
    return tuple(box)


def _pick_skull(skulls: Sequence[np.ndarray], real_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """The training skull of one step: ``skulls[0]`` (the real one) with probability ``real_fraction``, else one of
    the others at random (shared with the dense baseline of ``benchmarks/sparse_completion_accuracy.py``, so both
    see the same skulls in the same order)."""
    if rng.random() < real_fraction or len(skulls) == 1:
        return skulls[0]
    return skulls[1 + int(rng.integers(len(skulls) - 1))]


def resample_mask(mask: np.ndarray, affine: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(bool mask, affine)`` resampled to voxel ``spacing`` (mm) by nearest neighbour (MONAI ``Spacing``)."""
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    img = MetaTensor(torch.from_numpy(np.asarray(mask)[None].astype(np.float32)), affine=torch.as_tensor(affine))
    out = Spacing(pixdim=tuple(float(s) for s in spacing), mode="nearest")(img)
    return np.asarray(out[0]) > 0.5, np.asarray(out.affine, dtype=np.float64)


def load_mri_skull_at_ct_spacing(spacing: Sequence[float] = CT_SPACING) -> tuple[np.ndarray, np.ndarray]:
    """``(bool skull, affine)``: the skull extracted from the ``mri_ch2`` T1 head
    (:func:`monai_fovea.data.skull_extraction.load_mri_skull`, 1 mm isotropic) resampled to the CT skull's voxel
    spacing, so that a network trained on the CT sees bone of the same thickness in voxels."""
    from monai_fovea.data.skull_extraction import load_mri_skull

    return resample_mask(*load_mri_skull(), spacing)


def evaluation_cases(num_ct: int = len(EVAL_SEEDS), synthetic_seed: int = 999, num_synthetic: int = 2,
                     num_mri: int = 3) -> list[dict[str, Any]]:
    """Held-out cases: the CT skull with the defects of :data:`EVAL_SEEDS` (the training skull, unseen defects);
    a synthetic skull never used in training (seed ``synthetic_seed``) with the first ``num_synthetic`` of them;
    and the skull extracted from the MRI head sample (another subject and modality, never used in training) at the
    CT's spacing with the first ``num_mri`` of them."""
    cases = []
    if num_ct:
        ct, _ = load_ct_skull()
        cases += [{"name": f"ct_head/defect{s}", **make_defect_case(ct, s)} for s in EVAL_SEEDS[:num_ct]]
    if num_synthetic:
        (synth,) = synthetic_skulls([synthetic_seed])
        cases += [{"name": f"synthetic{synthetic_seed}/defect{s}", **make_defect_case(synth, s)}
                  for s in EVAL_SEEDS[:num_synthetic]]
    if num_mri:
        mri, _ = load_mri_skull_at_ct_spacing()
        cases += [{"name": f"mri_ch2/defect{s}", **make_defect_case(mri, s)} for s in EVAL_SEEDS[:num_mri]]
    return cases


def evaluate(model: torch.nn.Module, cases: Sequence[dict[str, Any]] | None = None, device: str | torch.device = "cpu",
             spacing: Sequence[float] | None = CT_SPACING, inferer: Any = None) -> dict[str, Any]:
    """Implant DSC, border DSC (10 voxels) and HD95 (mm with ``spacing``) per held-out case and their means."""
    from monai_fovea.metrics import implant_scores

    cases = evaluation_cases() if cases is None else cases
    rows = []
    for case in tqdm(cases, desc="evaluate"):
        implant, _ = complete_skull(model, case["defective"], device, inferer)
        s = implant_scores(torch.from_numpy(implant)[None, None].float(), torch.from_numpy(case["implant"])[None, None],
                           torch.from_numpy(case["defective"])[None, None], 10, spacing)
        rows.append({"name": case.get("name", ""), **{k: float(v[0]) for k, v in s.items()}})
    means = {k: float(np.mean([r[k] for r in rows if math.isfinite(r[k])] or [float("nan")]))
             for k in ("dice", "border_dice", "hd95")}
    return {"cases": rows, "mean": means}


# --- super-resolution: the same generative machinery refines a coarse occupancy grid -------------------------
def superres_input(mask: np.ndarray, factor: int = 2) -> np.ndarray:
    """Bool ``[*S]``: ``mask`` max-pooled by ``factor`` (the coarse occupancy grid) and upsampled back by nearest
    neighbour -- what a coarse scan gives at the fine grid; the network refines it."""
    mask = np.asarray(mask, dtype=bool)
    t = torch.from_numpy(mask[None, None].astype(np.float32))
    pad = [(-s) % factor for s in mask.shape]
    t = torch.nn.functional.pad(t, [0, pad[2], 0, pad[1], 0, pad[0]])
    coarse = torch.nn.functional.max_pool3d(t, factor)
    up = torch.nn.functional.interpolate(coarse, scale_factor=factor, mode="nearest")[0, 0]
    return up[: mask.shape[0], : mask.shape[1], : mask.shape[2]].numpy() > 0


def train_superres(output_path: str | os.PathLike, steps: int = 400, lr: float = 5e-3,
                   channels: Sequence[int] = BUNDLE_CHANNELS, factor: int = 2, crop_size: Sequence[int] = (64, 64, 64),
                   skull_seeds: Sequence[int] = (100, 101, 102), seed: int = 0,
                   device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train a ×``factor`` occupancy super-resolution net on synthetic skulls only (the CT skull stays held out).

    Runs the bundle's training workflow (``configs/train.json``) with its ``configs/train_superres.json`` override:
    the skulls in turn, a ``crop_size`` crop around a random skull voxel (``RandCropByPosNegLabeld``), input = edge
    shell of :func:`superres_input`, target = the full-resolution mask (:class:`~monai_fovea.apps.skull_training.
    SuperResInputd`); the same network, multi-level loss, Adam (amsgrad) and handlers as the completion task, no
    validation. Saves the ``build_network`` state dict (the last step) to ``output_path``.

    Returns:
        ``{"losses": [per step], "output_path": str}``.

    Example:
        >>> train_superres("/tmp/sr.pt", steps=400)  # doctest: +SKIP
    """
    import shutil
    import tempfile

    from ignite.engine import Events
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    from monai_fovea.apps.bundles import bundle_root

    configs = Path(bundle_root("sparse_skull_completion")) / "configs"
    losses: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        parser = ConfigParser()
        parser.read_config([str(configs / "train.json"), str(configs / "train_superres.json")])
        parser.read_meta(str(configs / "metadata.json"))
        parser.update({"device": torch.device(device), "channels": list(channels), "superres_factor": int(factor),
                       "superres_crop": list(crop_size), "superres_skull_seeds": list(skull_seeds),
                       "learning_rate": lr, "epoch_length": int(steps), "max_epochs": 1, "seed": seed,
                       "model_dir": tmp, "output_dir": tmp, "checkpoint_dir": str(Path(tmp) / "resume"),
                       "log_iterations": False})
        set_determinism(seed=seed)
        trainer = parser.get_parsed_content("train#trainer")
        trainer.add_event_handler(Events.ITERATION_COMPLETED,
                                  lambda e: losses.append(float(e.state.output["loss"].detach())))
        trainer.run()
        Path(output_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "model_last.pt", output_path)
    return {"losses": losses, "output_path": str(output_path)}


def superres(model: torch.nn.Module, coarse_up: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """Bool fine occupancy from a nearest-upsampled coarse mask (one ×factor step; chain calls for ×4)."""
    from monai_fovea.inferers import SparseInferer

    shell, _ = completion_target(np.asarray(coarse_up, bool), np.zeros_like(coarse_up, dtype=bool))
    model.eval()
    with torch.no_grad():
        logits = SparseInferer(memory_budget_voxels=2_000_000, overlap=32)(shell.to(device), model)
    return (torch.as_tensor(logits)[0, 0] > 0).cpu().numpy()
