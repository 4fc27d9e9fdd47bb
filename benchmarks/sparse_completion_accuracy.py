"""Skull completion accuracy on held-out defects: sparse generative net at full resolution vs a dense U-Net at
half resolution per axis (1/8 of the voxels), side by side.

* Sparse: the bundle's ``SparseCompletionNet`` (``bundles/sparse_skull_completion/models/model.pt``, trained by
  the previous loop of its ``train.json`` recipe: whole volumes, 75 % of the steps on the CT skull) on the full-resolution CT skull
  (0.957 x 0.957 x 1.5 mm).
* Dense: MONAI ``UNet`` (channels 8-16-32-64, strides 2-2-2) trained here exactly like the sparse net -- same skull
  choice, same defect stream (:func:`monai_fovea.apps.sparse_completion.make_defect_case`, seeds disjoint from the
  evaluation seeds), same number of steps, whole volumes -- but on the defective mask downsampled x2 per axis
  (max-pooling) with the complete skull as target (BCE). At test time its logits are upsampled (trilinear) to full
  resolution. ``--dense-model PATH`` saves it (or loads it when the file exists) so evaluation can be re-run.
* Both predictions go through the same post-processing (minus the defective skull, opening, largest 26-component;
  reported again with the "vault prior" -- predictions below the defect slab of ``vault_region`` dropped first)
  and metrics (implant DSC, border DSC within 10 voxels, HD95 in mm) on the held-out cases of
  :func:`monai_fovea.apps.sparse_completion.evaluation_cases`.
* Memory: peak RSS increase of one training step of each network (whole volume, or ``--crop``), in fresh
  subprocesses.

Run (CPU; the dense training is ~0.25 s a step on one core, ~12 minutes for 2800 steps):

    OMP_NUM_THREADS=1 python benchmarks/sparse_completion_accuracy.py --dense-model /tmp/dense_completion.pt
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DENSE_FACTOR = 2


def _dense_net():
    from monai.networks.nets import UNet

    return UNet(3, 1, 1, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=0)


def _down(mask: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
    pad = [(-s) % (DENSE_FACTOR * 8) for s in t.shape[2:]]  # divisible by factor x total stride
    t = torch.nn.functional.pad(t, [0, pad[2], 0, pad[1], 0, pad[0]])
    return torch.nn.functional.max_pool3d(t, DENSE_FACTOR)


def _dense_batch(case, box):
    return _down(case["defective"][box]), _down(case["complete"][box])


def train_dense(steps: int, lr: float, crop_size, real_fraction: float = 0.75, seed: int = 0,
                device: str = "cpu", loss_name: str = "bce") -> torch.nn.Module:
    """The dense baseline, trained like the shipped sparse model (the previous hand-written loop of the bundle's
    recipe): the same skull choice and defect stream (same seeds, so the same defects in the same order), whole
    volumes (``crop_size=None``) or crops."""
    from tqdm import tqdm

    from monai_fovea.apps.sparse_completion import (_crop_box, _pick_skull, load_ct_skull, make_defect_case,
                                                    synthetic_skulls)

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed * 1000)
    skulls = [load_ct_skull()[0]] + synthetic_skulls(range(100, 103))
    net = _dense_net().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr, amsgrad=True)
    dice = None
    if loss_name == "bce+dice":  # bone is ~6 % of the grid: a Dice term keeps the rare implant voxels from being ignored
        from monai.losses import DiceLoss

        dice = DiceLoss(sigmoid=True)
    net.train()
    for step in tqdm(range(steps), desc="train dense"):
        skull = _pick_skull(skulls, real_fraction, rng)
        case = make_defect_case(skull, seed * 100_000 + 1000 + step)
        if crop_size is None:
            box = tuple(slice(None) for _ in skull.shape)
        else:
            box = _crop_box(case, crop_size, rng, around_defect=rng.random() >= 0.25)
        x, y = (t.to(device) for t in _dense_batch(case, box))
        logits = net(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        if dice is not None:
            loss = loss + dice(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval().cpu()


def dense_occupancy(net, defective: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = net(_down(defective))
        up = torch.nn.functional.interpolate(logits, scale_factor=DENSE_FACTOR, mode="trilinear", align_corners=False)
    return (up[0, 0, : defective.shape[0], : defective.shape[1], : defective.shape[2]] > 0).numpy()


def sparse_occupancy(net, defective: np.ndarray) -> np.ndarray:
    from monai_fovea.apps.sparse_completion import completion_target
    from monai_fovea.inferers import SparseInferer

    shell, _ = completion_target(defective, np.zeros_like(defective))
    net.eval()
    with torch.no_grad():
        logits = SparseInferer(memory_budget_voxels=2_000_000, overlap=32)(shell, net)
    return (torch.as_tensor(logits)[0, 0] > 0).numpy()


def _scores(implant, case):
    from monai_fovea.metrics import implant_scores

    s = implant_scores(torch.from_numpy(implant)[None, None].float(), torch.from_numpy(case["implant"])[None, None],
                       torch.from_numpy(case["defective"])[None, None], 10, (0.957, 0.957, 1.5))
    return {k: float(v[0]) for k, v in s.items()}


def memory_worker(kind: str, crop_size) -> dict:
    from monai_fovea.apps.sparse_completion import _crop_box, build_network, completion_target, load_ct_skull, make_defect_case
    from monai_fovea.networks.sparse_blocks import dense_to_spconv

    case = make_defect_case(load_ct_skull()[0], 1000)
    box = tuple(slice(None) for _ in range(3)) if crop_size is None else _crop_box(case, crop_size, np.random.default_rng(0))
    if kind == "sparse":
        net = build_network().net
        shell, target = completion_target(case["defective"][box], case["implant"][box])
        x = dense_to_spconv(shell)

        def step():
            return net.loss(x, target)[0]
    else:
        net = _dense_net()
        x, y = _dense_batch(case, box)

        def step():
            return torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
    with open("/proc/self/status") as f:
        before = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
    step().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "step_increase_mb": peak - before, "peak_rss_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2800, help="dense training steps (the bundle's sparse model: 2800)")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--crop", default="none", help="'none' = whole volumes (as the bundle's train.json), or X,Y,Z")
    p.add_argument("--device", default="cpu", help="where the dense baseline trains")
    p.add_argument("--dense-loss", choices=["bce", "bce+dice"], default="bce+dice")
    p.add_argument("--sparse-model", default=str(ROOT / "bundles/sparse_skull_completion/models/model.pt"))
    p.add_argument("--dense-model", default=None, help="save the trained dense net here (load it if the file exists)")
    p.add_argument("--memory-worker", choices=["sparse", "dense"])
    args = p.parse_args()
    crop = None if args.crop.lower() == "none" else [int(c) for c in args.crop.split(",")]
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, crop)), flush=True)
        return

    from monai_fovea.apps.sparse_completion import build_network, evaluation_cases, postprocess_implant

    mem = {}
    for kind in ("sparse", "dense"):
        out = subprocess.run([sys.executable, __file__, "--memory-worker", kind, "--crop", args.crop],
                             capture_output=True, text=True, env=os.environ.copy()).stdout
        mem[kind] = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
    sparse = build_network()
    sparse.load_state_dict(torch.load(args.sparse_model, map_location="cpu", weights_only=True))
    if args.dense_model and Path(args.dense_model).is_file():
        dense = _dense_net()
        dense.load_state_dict(torch.load(args.dense_model, map_location="cpu", weights_only=True))
        dense.eval()
    else:
        dense = train_dense(args.steps, args.lr, crop, device=args.device, loss_name=args.dense_loss)
        if args.dense_model:
            from monai_fovea.data.io import save_state_dict

            save_state_dict(dense, args.dense_model)
    rows = []
    for case in evaluation_cases():
        row = {"case": case["name"], "implant_voxels": int(case["implant"].sum())}
        occupancy = {"sparse": sparse_occupancy(sparse, case["defective"]), "dense": dense_occupancy(dense, case["defective"])}
        for kind, occ in occupancy.items():
            added = occ & ~case["defective"]
            # diagnostic: share of the implant the network generated at all, before opening / component selection
            row[kind + "_raw_recall"] = float((added & case["implant"]).sum() / max(case["implant"].sum(), 1))
            for vf, tag in ((None, ""), (0.5, "+vault")):  # the seed's post-processing, then with the vault prior
                row[kind + tag] = _scores(postprocess_implant(occ, case["defective"], vf), case)
        rows.append(row)
        print(json.dumps(row), flush=True)

    def mean(group, kind, key):
        vals = [r[kind][key] for r in group if math.isfinite(r[kind][key])]
        return (float(np.mean(vals)) if vals else float("nan")), len(vals)

    print(f"\nheld-out cases: {len(rows)} ({', '.join(r['case'] for r in rows)})")
    print(f"training-step memory on {'the whole volume' if crop is None else 'a ' + args.crop + ' crop'} (peak RSS increase): sparse {mem['sparse']['step_increase_mb']:.0f} MB"
          f", dense x1/{DENSE_FACTOR} {mem['dense']['step_increase_mb']:.0f} MB")
    skulls = list(dict.fromkeys(r["case"].split("/")[0] for r in rows))  # ct_head, synthetic999, mri_ch2
    for skull in skulls + ["all"]:
        group = [r for r in rows if skull == "all" or r["case"].startswith(skull + "/")]
        print(f"\n{skull} ({len(group)} cases)")
        print("net                          implant DSC  border DSC  HD95 mm (finite cases)  raw implant recall")
        for kind, label in (("sparse", "sparse, full resolution"), ("dense", f"dense UNet, 1/{DENSE_FACTOR} per axis"),
                            ("sparse+vault", "sparse + vault prior"), ("dense+vault", "dense + vault prior")):
            d, _ = mean(group, kind, "dice")
            b, _ = mean(group, kind, "border_dice")
            h, n = mean(group, kind, "hd95")
            raw = float(np.mean([r[kind.split("+")[0] + "_raw_recall"] for r in group]))
            print(f"{label:28s} {d:11.3f}  {b:10.3f}  {h:7.2f} ({n}/{len(group)})  {raw:.3f}")

if __name__ == "__main__":
    main()
