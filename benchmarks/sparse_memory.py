"""Peak memory and time of one training step: SparseUNet (spconv) vs dense U-Nets with the same channel widths.

Two dense baselines: MONAI's ``UNet(channels=(8, 16, 32), strides=(2, 2), num_res_units=0)`` (its first conv is
already strided, so it holds no 8-channel full-resolution feature map) and ``dense_twin``: the same layers as
``SparseUNet`` (two 3x3x3 conv-BN-ReLU per level, k2 s2 conv down, k2 s2 transposed conv up, concatenated skip,
1x1x1 head) with dense convolutions -- the like-for-like comparison.

Input: the real skull of the ``ct_head`` sample (bone mask, largest 26-component), at full resolution
(256 x 256 x 108) and upsampled x2 per axis (512 x 512 x 216 = 8x the voxels, nearest neighbour). The sparse
network sees the one-voxel edge shell of the skull (the seed's input, ~3% of the box at full resolution); the
dense network sees the same shell as a dense volume. Target: a 2-class label (shell voxel above / below the
skull's mid-height), so both networks do the same segmentation task.

Every measurement runs in a fresh subprocess; peak memory = that process's max RSS (``ru_maxrss``), reported
both raw and as the increase over the RSS just before the step (imports, data and model excluded). The dense
runs are given an address-space limit (``--dense-limit-gb``, default 20 GB); a run that exceeds it is reported
as "did not fit" -- a measured outcome, not an estimate.

Run (CPU; ~10 minutes on one core):

    OMP_NUM_THREADS=1 python benchmarks/sparse_memory.py
    OMP_NUM_THREADS=1 python benchmarks/sparse_memory.py --device cuda   # peak = torch.cuda.max_memory_allocated
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CHANNELS = (8, 16, 32)
STRIDES = (2, 2)


def _skull(scale: int):
    import numpy as np
    import torch

    from monai_fovea.apps.sparse_completion import load_ct_skull
    from monai_fovea.transforms import EdgeShell

    skull, _ = load_ct_skull()
    if scale > 1:
        skull = skull.repeat(scale, 0).repeat(scale, 1).repeat(scale, 2)
    shell = EdgeShell()(torch.from_numpy(np.ascontiguousarray(skull[None])).float())
    pad = [(-s) % 4 for s in shell.shape[1:]]  # dense UNet needs sizes divisible by its total stride
    shell = torch.nn.functional.pad(shell, [0, pad[2], 0, pad[1], 0, pad[0]])
    zc = shell.shape[-1] // 2
    label = torch.zeros_like(shell, dtype=torch.long)
    label[..., zc:] = 1
    return shell[None], label[None] * (shell[None] > 0)  # [1, 1, *S]


def DenseTwin():
    """SparseUNet's layers with dense convolutions (see the module docstring)."""
    import torch
    from torch import nn

    def block(cin, cout):
        return [nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU()]

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            c = CHANNELS
            self.stem = nn.Sequential(*block(1, c[0]), *block(c[0], c[0]))
            self.down = nn.ModuleList([nn.Sequential(nn.Conv3d(c[i], c[i + 1], 2, 2, bias=False),
                                                     nn.BatchNorm3d(c[i + 1]), nn.ReLU()) for i in range(len(STRIDES))])
            self.enc = nn.ModuleList([nn.Sequential(*block(c[i + 1], c[i + 1]), *block(c[i + 1], c[i + 1]))
                                      for i in range(len(STRIDES))])
            self.up = nn.ModuleList([nn.Sequential(nn.ConvTranspose3d(c[i + 1], c[i], 2, 2, bias=False),
                                                   nn.BatchNorm3d(c[i]), nn.ReLU()) for i in range(len(STRIDES))])
            self.dec = nn.ModuleList([nn.Sequential(*block(2 * c[i], c[i]), *block(c[i], c[i]))
                                      for i in range(len(STRIDES))])
            self.head = nn.Conv3d(c[0], 2, 1)

        def forward(self, x):
            h = self.stem(x)
            skips = []
            for down, enc in zip(self.down, self.enc):
                skips.append(h)
                h = enc(down(h))
            for i in reversed(range(len(STRIDES))):
                h = self.dec[i](torch.cat([self.up[i](h), skips[i]], 1))
            return self.head(h)

    return Twin()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(kind: str, scale: int, device: str) -> dict:
    import torch

    torch.manual_seed(0)
    x, label = _skull(scale)
    active = int((x > 0).sum())
    if kind == "sparse":
        from monai_fovea.networks import SparseUNet
        from monai_fovea.networks.sparse_blocks import dense_to_spconv

        net = SparseUNet(3, 1, 2, channels=CHANNELS, strides=STRIDES).to(device)
        inp = dense_to_spconv(x.to(device))
        idx = inp.indices.long()
        target = label.to(device)[idx[:, 0], 0, idx[:, 1], idx[:, 2], idx[:, 3]]

        def step():
            out = net(inp)
            return torch.nn.functional.cross_entropy(out.features, target)
    else:
        if kind.startswith("monai_unet"):
            from monai.networks.nets import UNet

            # monai_unet_full: first stride 1, so like SparseUNet it keeps an 8-channel full-resolution level
            strides = (1,) + STRIDES[1:] if kind == "monai_unet_full" else STRIDES
            net = UNet(3, 1, 2, channels=CHANNELS, strides=strides, num_res_units=0).to(device)
        else:
            net = DenseTwin().to(device)
        xd, ld = x.to(device), label[:, 0].to(device)

        def step():
            return torch.nn.functional.cross_entropy(net(xd), ld)

    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    del x, label
    before = _rss_mb()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    def train_step():
        loss = step()
        opt.zero_grad()
        loss.backward()
        opt.step()

    repeats = 1
    if device.startswith("cuda"):  # a warm-up step (kernel selection, allocator), then the mean of 5 steps
        train_step()
        torch.cuda.synchronize()
        repeats = 5
    t0 = time.perf_counter()
    for _ in range(repeats):
        train_step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / repeats
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"kind": kind, "scale": scale, "grid_voxels": int(xd.numel()) if kind != "sparse" else int(inp.spatial_shape[0] * inp.spatial_shape[1] * inp.spatial_shape[2]),
              "active_voxels": active, "peak_rss_mb": peak, "step_increase_mb": peak - before, "seconds": seconds}
    if device.startswith("cuda"):
        result["gpu_peak_mb"] = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    return result


def _run_child(kind: str, scale: int, device: str, limit_gb: float | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--scale", str(scale), "--device", device]
    if limit_gb:
        cmd += ["--limit-gb", str(limit_gb)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or "").strip().splitlines()[-1:] or ["?"]
    return {"kind": kind, "scale": scale, "failed": f"exit {proc.returncode}: {tail[0][:200]}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dense-limit-gb", type=float, default=20.0)
    p.add_argument("--scales", default="1,2")
    p.add_argument("--kinds", default="sparse,dense_twin,monai_unet,monai_unet_full")
    p.add_argument("--worker", choices=["sparse", "dense_twin", "monai_unet", "monai_unet_full"])
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--limit-gb", type=float)
    args = p.parse_args()
    if args.worker:
        if args.limit_gb:
            limit = int(args.limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(worker(args.worker, args.scale, args.device)), flush=True)
        return
    rows = {}
    for scale in [int(s) for s in args.scales.split(",")]:
        for kind in args.kinds.split(","):
            rows[(kind, scale)] = r = _run_child(kind, scale, args.device, args.dense_limit_gb if kind != "sparse" else None)
            print(json.dumps(r), flush=True)
    print("\nkind        scale  active voxels   peak RSS MB  step increase MB  seconds")
    for (kind, scale), r in rows.items():
        if "failed" in r:
            print(f"{kind:11s} x{scale}    did not fit / failed under the {args.dense_limit_gb:g} GB limit ({r['failed']})")
        else:
            gpu = f"  GPU peak {r['gpu_peak_mb']:.0f} MB" if "gpu_peak_mb" in r else ""
            print(f"{kind:11s} x{scale}  {r['active_voxels']:>13,d}  {r['peak_rss_mb']:>12.0f}  {r['step_increase_mb']:>16.0f}  {r['seconds']:>7.3f}{gpu}")

    def ratio(a, b, key):
        ra, rb = rows.get(a, {}), rows.get(b, {})
        return ra[key] / rb[key] if key in ra and key in rb and rb[key] else float("nan")

    for dense in ("dense_twin", "monai_unet", "monai_unet_full"):
        for scale in (1, 2):
            print(f"\nsparse / {dense} at x{scale}: GPU peak {ratio(('sparse', scale), (dense, scale), 'gpu_peak_mb'):.3f}, peak RSS {ratio(('sparse', scale), (dense, scale), 'peak_rss_mb'):.3f}, "
                  f"step increase {ratio(('sparse', scale), (dense, scale), 'step_increase_mb'):.3f}, "
                  f"time {ratio(('sparse', scale), (dense, scale), 'seconds'):.3f}")
    print(f"sparse x2 / x1 (8x grid voxels): GPU peak {ratio(('sparse', 2), ('sparse', 1), 'gpu_peak_mb'):.2f}, peak RSS {ratio(('sparse', 2), ('sparse', 1), 'peak_rss_mb'):.2f}, "
          f"step increase {ratio(('sparse', 2), ('sparse', 1), 'step_increase_mb'):.2f}, "
          f"time {ratio(('sparse', 2), ('sparse', 1), 'seconds'):.2f}")
    for dense in ("dense_twin", "monai_unet", "monai_unet_full"):
        print(f"{dense} x2 / x1: GPU peak {ratio((dense, 2), (dense, 1), 'gpu_peak_mb'):.2f}, peak RSS {ratio((dense, 2), (dense, 1), 'peak_rss_mb'):.2f}, "
              f"step increase {ratio((dense, 2), (dense, 1), 'step_increase_mb'):.2f}")


if __name__ == "__main__":
    main()
