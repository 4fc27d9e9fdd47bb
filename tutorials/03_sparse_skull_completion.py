# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 3: sparse convolutions, skull completion at full resolution
#
# A CT skull at its acquired resolution is a large volume, but the bone fills only a few percent of it, and its
# one-voxel surface even less. A dense 3D CNN spends its memory and time on the empty voxels, which is why skull
# completion networks usually run on downsampled volumes or on patches. Li et al. (2022) store only the non-empty
# voxels (coordinates plus features) and convolve them with sparse convolutions, so a network can see the whole
# skull at full resolution. For shape completion the decoder has to *generate* voxels that were absent from the
# input (the missing piece of bone). Its transposed convolutions propose child voxels at each finer level, a small
# classifier scores them, and the unlikely ones are pruned before the next level.
#
# This tutorial, on the `ct_head` sample (256 x 256 x 108 CT, 0.957 x 0.957 x 1.5 mm):
#
# 1. turns the bone mask into its edge shell (`EdgeShell`) and then into a `SparseVolume` (`ToSparse`), and
#    prints how few voxels are active;
# 2. cuts a synthetic defect (`RandSkullDefectd`, AutoImplant style) into the skull;
# 3. trains a `SparseCompletionNet` for a few steps, only to show the loop: shell of the defective skull in, shell
#    plus implant out, a BCE loss at every decoder level;
# 4. completes the whole skull at full resolution in one pass with `SparseInferer`. It uses the weights the
#    `sparse_skull_completion` bundle trained for the same architecture (a few tutorial steps cannot complete a
#    skull), then `SparseToDense`, and scores the implant (DSC, border DSC, HD95 in mm);
# 5. saves slices of the result.

# %%
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write PNGs; no display needed
import matplotlib.pyplot as plt
import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent, LoadImage

from monai_fovea.apps.sparse_completion import BUNDLE_CHANNELS, build_network, postprocess_implant
from monai_fovea.data import samples
from monai_fovea.data.sparse_volume import SparseVolume
from monai_fovea.inferers import SparseInferer
from monai_fovea.metrics import implant_scores
from monai_fovea.networks import SparseCompletionNet
from monai_fovea.transforms import EdgeShell, RandSkullDefectd, SparseToDense, ToSparse

# the repository: above this script, or (in a notebook, which has no __file__) the first folder up from the working
# directory that holds bundles/
REPO = (Path(__file__).resolve().parents[1] if "__file__" in globals()
        else next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "bundles").is_dir()), Path.cwd()))
BUNDLE_WEIGHTS = REPO / "bundles" / "sparse_skull_completion" / "models" / "model.pt"
SPACING = (0.957, 0.957, 1.5)  # mm, of the ct_head sample
DEFECT_RADII = (8.0, 14.0)  # voxels
CROP = (64, 64, 48)  # training crops around the defect keep the demo steps short
BACKGROUND_LOGIT = -20.0  # dense value of voxels the network did not generate: "empty"

# %% [markdown]
# ## 1. From a dense bone mask to a sparse shell
#
# `LoadImage` reads the NIfTI into a MetaTensor `[1, X, Y, Z]` that keeps its affine. The bone threshold also
# catches small calcifications and bits of the head holder; MONAI's `KeepLargestConnectedComponent` (26-connected)
# keeps the skull only, as the bundle does. `EdgeShell` subtracts the
# mask's erosion (face neighbours), which leaves the one-voxel surface that the sparse network takes as input.
# `ToSparse` keeps the non-zero voxels as int32 coordinates `[M, 1 + 3]` (the first column is the batch index)
# with one feature per voxel, plus the spatial shape and the affine. The *occupancy* is `M / (X Y Z)`, the
# fraction of the volume the network actually computes on.


# %%
def load_skull() -> torch.Tensor:
    """The skull: the largest 26-connected component of the ``ct_head`` bone mask, a MetaTensor
    ``[1, 256, 256, 108]`` (0/1 float, with its affine)."""
    bone = LoadImage(image_only=True, ensure_channel_first=True)(str(samples.fetch("ct_head")["bone"]))
    bone = (bone > 0).float()
    skull = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, connectivity=3)(bone.clone())
    print(f"bone mask {int(bone.sum())} voxels, largest component (skull) {int(skull.sum())}")
    return skull


def sparse_shell(mask: torch.Tensor) -> tuple[torch.Tensor, SparseVolume, dict]:
    """Edge shell (dense, same type as ``mask``), its ``SparseVolume`` and the occupancy numbers."""
    shell = EdgeShell(thickness=1)(mask)
    vol = ToSparse()(shell)
    total = int(np.prod(mask.shape[1:]))
    stats = {
        "volume_voxels": total,
        "skull_voxels": int(mask.sum()),
        "shell_voxels": vol.num_active,
        "skull_fraction": int(mask.sum()) / total,
        "occupancy": vol.num_active / total,
    }
    print(f"volume {tuple(mask.shape[1:])} = {total} voxels; skull {100 * stats['skull_fraction']:.2f} %; "
          f"edge shell (active set) {vol.num_active} voxels = {100 * stats['occupancy']:.2f} %")
    print(f"SparseVolume: coords {tuple(vol.coords.shape)} {vol.coords.dtype}, features {tuple(vol.features.shape)}")
    return shell, vol, stats


# %% [markdown]
# ## 2. A synthetic defect
#
# `RandSkullDefectd` picks a skull voxel in the upper half of the vault and removes a cube, a ball or an
# irregular union of balls around it (radius 8-14 voxels here). The removed bone becomes the `implant` and the
# rest the `defective` skull; the two are disjoint and together give back the complete skull.


# %%
def cut_defect(skull: torch.Tensor, seed: int, verbose: bool = True) -> dict:
    """``{"skull", "defective", "implant"}`` MetaTensors ``[1, X, Y, Z]`` for one seeded defect."""
    cut = RandSkullDefectd("skull", radius_range=DEFECT_RADII).set_random_state(seed=seed)
    case = cut({"skull": skull})
    if verbose:
        print(f"defect seed {seed}: implant {int(case['implant'].sum())} voxels")
    return case


def network_io(defective: torch.Tensor, implant: torch.Tensor) -> tuple[SparseVolume, torch.Tensor]:
    """The network's input (edge shell of the defective skull, sparse) and its target voxels: that shell plus the
    implant, as int32 coordinates ``[N, 4]`` with batch index 0."""
    shell = EdgeShell()(defective)
    x = ToSparse()(shell)
    target = ToSparse()((shell > 0) | (implant > 0)).coords
    return x, target


# %% [markdown]
# ## 3. A few training steps
#
# `SparseCompletionNet.loss(x, target)` runs the encoder-decoder on a spconv tensor and sums a BCE over the
# decoder levels. In training mode the target voxels are kept through pruning, so the finer levels always see
# them. Each step cuts a fresh defect and crops a 64 x 64 x 48 box around it, which keeps the steps short on a
# CPU. The network is fully convolutional, so it can still be applied to the whole volume afterwards. (The bundle's
# weights were trained on *whole* volumes on a GPU: with crops the network rarely sees the skull's natural openings
# -- orbits, nasal cavity -- left open in the target and learns to "complete" them too; see the bundle's README.)


# %%
def crop_around(case: dict, size: tuple[int, ...]) -> tuple[slice, ...]:
    """A ``size`` box centred on the implant, shifted inside the volume."""
    pos = torch.nonzero(case["implant"][0] > 0).float()
    centre = pos.mean(0) if len(pos) else torch.tensor(case["implant"].shape[1:]) / 2.0
    box = []
    for c, s, n in zip(centre.tolist(), size, case["implant"].shape[1:]):
        lo = min(max(int(round(c - s / 2)), 0), n - s)
        box.append(slice(lo, lo + s))
    return (slice(None), *box)


def train_few_steps(skull: torch.Tensor, steps: int, seed: int = 0) -> list[float]:
    """Train a fresh ``SparseCompletionNet`` (the bundle's channels) for ``steps`` Adam steps; the losses."""
    torch.manual_seed(seed)
    net = SparseCompletionNet(3, in_channels=1, channels=BUNDLE_CHANNELS).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, amsgrad=True)
    losses = []
    for step in range(steps):
        case = cut_defect(skull, seed=1000 + step, verbose=False)  # seeds disjoint from the evaluation one
        box = crop_around(case, CROP)
        x, target = network_io(case["defective"][box], case["implant"][box])
        loss, _per_level = net.loss(x.to_spconv(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().item())
    print(f"training loss (sum of {net.num_levels} level BCEs): {losses[0]:.3f} -> {losses[-1]:.3f}")
    return losses


# %% [markdown]
# ## 4. Whole-skull completion in one pass
#
# `SparseInferer` takes a `SparseVolume` and returns one. It runs the whole volume in one pass while the active set
# fits its memory budget, and tiles it otherwise. `SparseToDense` scatters the occupancy logits back onto the
# 256 x 256 x 108 grid, with `-20` where nothing was generated. The implant is the occupied voxels minus the
# defective skull, cleaned by a binary opening and reduced to the largest connected component
# (`postprocess_implant`, as the bundle does).


# %%
def complete(case: dict, weights: Path | None) -> tuple[torch.Tensor, np.ndarray, dict]:
    """Occupancy logits ``[1, X, Y, Z]`` (dense MetaTensor), predicted implant and its scores."""
    model = build_network(BUNDLE_CHANNELS)
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net = model.net.eval()
    x, _ = network_io(case["defective"], case["implant"])
    with torch.no_grad():
        out = SparseInferer(memory_budget_voxels=2_000_000, overlap=32)(x, net)
    logits = SparseToDense(background=BACKGROUND_LOGIT)(out)
    defective = case["defective"][0].numpy() > 0
    implant = postprocess_implant(logits[0] > 0, defective)
    scores = implant_scores(torch.from_numpy(implant)[None, None].float(), case["implant"][None],
                            case["defective"][None], border_distance=10, spacing=SPACING)
    scores = {k: float(v[0]) for k, v in scores.items()}
    print(f"generated {out.num_active} voxels, {int((logits > 0).sum())} occupied; predicted implant "
          f"{int(implant.sum())} voxels (true {int(case['implant'].sum())})")
    print(f"implant DSC {scores['dice']:.3f}, border DSC {scores['border_dice']:.3f}, HD95 {scores['hd95']:.2f} mm")
    return logits, implant, scores


# %% [markdown]
# ## 5. Figure: slices through the defect and a top view


# %%
def save_figure(case: dict, shell: torch.Tensor, implant_pred: np.ndarray, path: Path) -> None:
    """Axial and coronal slices through the defect centre (skull, shell, true and predicted implant), and top-down
    projections along the superior axis, which show predicted voxels wherever they are."""
    skull = case["skull"][0].numpy() > 0
    defective = case["defective"][0].numpy() > 0
    implant = case["implant"][0].numpy() > 0
    centre = np.argwhere(implant).mean(0).round().astype(int) if implant.any() else np.array(skull.shape) // 2

    def colour(d, t, p):  # grey: defective skull, green: true implant, magenta: predicted implant (white: both)
        rgb = np.zeros((*d.shape, 3))
        rgb[d] = 0.6
        rgb[t] = (0.0, 0.9, 0.0)
        rgb[p] = (0.9, 0.0, 0.9)
        rgb[t & p] = 1.0
        return rgb

    views = {"axial": (slice(None), slice(None), centre[2]), "coronal": (slice(None), centre[1], slice(None))}
    aspects = {"axial": SPACING[1] / SPACING[0], "coronal": SPACING[2] / SPACING[0]}  # physical proportions
    fig, axes = plt.subplots(3, 3, figsize=(13, 12))
    for row, (name, sl) in enumerate(views.items()):
        aspect = aspects[name]
        axes[row, 0].imshow(skull[sl].T, cmap="gray", origin="lower", aspect=aspect)
        axes[row, 0].set_title(f"{name}: complete skull")
        axes[row, 1].imshow(shell[0].numpy()[sl].T > 0, cmap="gray", origin="lower", aspect=aspect)
        axes[row, 1].set_title(f"{name}: edge shell (sparse input)")
        axes[row, 2].imshow(colour(*(a[sl].T for a in (defective, implant, implant_pred))), origin="lower",
                            aspect=aspect)
        axes[row, 2].set_title(f"{name}: true (green) / predicted (magenta) implant", fontsize=9)
    top = [a.any(axis=2).T for a in (defective, implant, implant_pred)]  # projection along the superior axis
    axes[2, 0].imshow(colour(top[0], top[1], np.zeros_like(top[2])), origin="lower")
    axes[2, 0].set_title("top view: skull + true implant")
    axes[2, 1].imshow(colour(top[0], np.zeros_like(top[1]), top[2]), origin="lower")
    axes[2, 1].set_title("top view: skull + predicted implant")
    axes[2, 2].imshow(colour(np.zeros_like(top[0]), top[1], top[2]), origin="lower")
    axes[2, 2].set_title("top view: true vs predicted implant", fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


# %% [markdown]
# ## 6. Everything together
#
# `--quick` takes 3 training steps and the default 20; neither matters for the inference, which uses the bundle's
# trained weights when they are there (`bundles/sparse_skull_completion/models/model.pt`) and the briefly trained
# network otherwise.


# %%
def main(output_dir: str | Path = "./outputs/tutorials/03_sparse_skull_completion", quick: bool = False,
         weights: str | Path | None = BUNDLE_WEIGHTS) -> dict:
    """Run the tutorial; write ``sparse_skull_completion.png`` and ``results.json`` into ``output_dir``.

    Args:
        weights: state dict of ``build_network()`` for the inference; ``None`` or a missing file: random weights.

    Returns:
        a dict with the occupancy numbers, the sparse shell, the defect case, the logits, the predicted implant,
        the scores, the training losses and the written files.
    """
    torch.set_num_threads(1)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    skull = load_skull()
    shell, vol, stats = sparse_shell(skull)
    case = cut_defect(skull, seed=0)
    losses = train_few_steps(skull, steps=3 if quick else 20)
    use = Path(weights) if weights is not None and Path(weights).is_file() else None
    print(f"inference weights: {use if use is not None else 'none found, random initialisation'}")
    logits, implant, scores = complete(case, use)
    files = {"figure": out / "sparse_skull_completion.png", "json": out / "results.json"}
    save_figure(case, shell, implant, files["figure"])
    summary = {**stats, "implant_voxels": int(case["implant"].sum()), "predicted_implant_voxels": int(implant.sum()),
               "train_losses": losses, "weights": str(use) if use else None, **scores}
    files["json"].write_text(json.dumps(summary, indent=2))
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    return {**summary, "skull": skull, "shell": shell, "sparse_shell": vol, "case": case, "logits": logits,
            "implant_pred": implant, "files": files}


# %%
if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Sparse skull completion tutorial")
    parser.add_argument("--output_dir", default="./outputs/tutorials/03_sparse_skull_completion")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("MONAI_FOVEA_QUICK") == "1",
                        help="3 training steps instead of 20 (the test's setting); default from MONAI_FOVEA_QUICK=1")
    parser.add_argument("--weights", default=str(BUNDLE_WEIGHTS), help="state dict for the inference ('' = none)")
    args, _ = parser.parse_known_args()  # tolerate a notebook kernel's own arguments
    result = main(args.output_dir, args.quick, args.weights or None)
    if "ipykernel" in sys.modules:  # in a notebook: show the figures the tutorial wrote
        from IPython.display import Image, display

        for png in sorted(Path(args.output_dir).glob("*.png")):
            display(Image(filename=str(png)))
