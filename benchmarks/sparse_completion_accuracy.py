"""Skull completion accuracy on held-out defects: sparse generative net at full resolution vs a dense U-Net at
half resolution per axis (1/8 of the voxels), side by side.

* Sparse: the bundle's ``SparseCompletionNet`` (``bundles/sparse_skull_completion/models/model.pt``, trained by
  its ``train.json``) on the full-resolution CT skull (0.957 x 0.957 x 1.5 mm).
* Dense: MONAI ``UNet`` (channels 8-16-32-64, strides 2-2-2) trained here, with the same defect stream
  (:func:`monai_fovea.apps.sparse_completion.make_defect_case`, seeds disjoint from the evaluation seeds), the same
  number of steps, crop size and share of random (non-defect) crops, but on the defective mask downsampled x2 per axis (max-pooling)
  with the complete skull as target (BCE). At test time its logits are upsampled (trilinear) to full resolution.
* Both predictions go through the same post-processing (minus the defective skull, opening, largest 26-component;
  reported again with the "vault prior" -- predictions below the defect slab of ``vault_region`` dropped first)
  and metrics (implant DSC, border DSC within 10 voxels, HD95 in mm) on the held-out cases of
  :func:`monai_fovea.apps.sparse_completion.evaluation_cases`: the CT skull with the defects of ``EVAL_SEEDS`` and
  a synthetic skull never seen in training.
* Memory: peak RSS increase of one training step of each network on a typical crop, in fresh subprocesses.

Run (CPU, ~10-15 minutes on one core):

    OMP_NUM_THREADS=1 python benchmarks/sparse_completion_accuracy.py --steps 800
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


def train_dense(steps: int, lr: float, crop_size, seed: int = 0) -> torch.nn.Module:
    from tqdm import tqdm

    from monai_fovea.apps.sparse_completion import _crop_box, load_ct_skull, make_defect_case, synthetic_skulls

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed * 1000)
    skulls = [load_ct_skull()[0]] + synthetic_skulls(range(100, 103))
    net = _dense_net()
    opt = torch.optim.Adam(net.parameters(), lr=lr, amsgrad=True)
    net.train()
    for step in tqdm(range(steps), desc="train dense"):
        skull = skulls[step % len(skulls)] if step % 2 == 0 else skulls[0]
        case = make_defect_case(skull, seed * 100_000 + 1000 + step)
        x, y = _dense_batch(case, _crop_box(case, crop_size, rng, around_defect=rng.random() >= 0.5))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


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
    box = _crop_box(case, crop_size, np.random.default_rng(0))
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
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--crop", default="80,80,56")
    p.add_argument("--sparse-model", default=str(ROOT / "bundles/sparse_skull_completion/models/model.pt"))
    p.add_argument("--memory-worker", choices=["sparse", "dense"])
    args = p.parse_args()
    crop = [int(c) for c in args.crop.split(",")]
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
    dense = train_dense(args.steps, args.lr, crop)
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

    def mean(kind, key):
        vals = [r[kind][key] for r in rows if math.isfinite(r[kind][key])]
        return (float(np.mean(vals)) if vals else float("nan")), len(vals)

    print(f"\nheld-out cases: {len(rows)} ({', '.join(r['case'] for r in rows)})")
    print(f"training-step memory on a {args.crop} crop (peak RSS increase): sparse {mem['sparse']['step_increase_mb']:.0f} MB"
          f", dense x1/{DENSE_FACTOR} {mem['dense']['step_increase_mb']:.0f} MB")
    print("net                          implant DSC  border DSC  HD95 mm (finite cases)  raw implant recall")
    for kind, label in (("sparse", "sparse, full resolution"), ("dense", f"dense UNet, 1/{DENSE_FACTOR} per axis"),
                        ("sparse+vault", "sparse + vault prior"), ("dense+vault", "dense + vault prior")):
        d, _ = mean(kind, "dice")
        b, _ = mean(kind, "border_dice")
        h, n = mean(kind, "hd95")
        raw = float(np.mean([r[kind.split("+")[0] + "_raw_recall"] for r in rows]))
        print(f"{label:28s} {d:11.3f}  {b:10.3f}  {h:7.2f} ({n}/{len(rows)})  {raw:.3f}")


if __name__ == "__main__":
    main()
