"""Peak memory and time of one training step: SparseUNet (spconv) vs dense U-Nets with the same channel widths.

Dense baselines (``--kinds``):

* ``monai_unet``: MONAI's ``UNet(channels, strides, num_res_units=0)`` (its first conv is already strided, so it
  holds no full-resolution feature map);
* ``monai_unet_full``: the same with a first stride of 1, so that like ``SparseUNet`` its first level stays at full
  resolution;
* ``dense_twin``: the same layers as ``SparseUNet`` (two 3x3x3 conv-BN-ReLU per level, k2 s2 conv down, k2 s2
  transposed conv up, concatenated skip, 1x1x1 head) with dense convolutions -- the like-for-like comparison.

Inputs (``--input``), at ``x1`` and at ``x2`` = twice the resolution per axis (8x the grid voxels):

* ``ct``: the real skull of the ``ct_head`` sample (bone mask, largest 26-component), 256 x 256 x 108, and the
  same mask nearest-upsampled to 512 x 512 x 216;
* ``synthetic``: ``skull_shell`` 128^3 (seed 0, thickness 2-5 voxels) and the same shell generated at 256^3 with
  twice the thickness (the same object at twice the resolution).

The sparse network sees the one-voxel edge shell of the mask (the seed's input); the dense networks see the same
shell as a dense volume. Target: a 2-class label (shell voxel above / below mid-height).

What is measured, each (network, input, scale) in a fresh subprocess (one SGD step, forward + backward):

* ``step_rss_mb``: the step's own resident-memory high-water mark above the RSS just before it. The kernel's peak
  RSS counter (``VmHWM``) is reset by writing ``5`` to ``/proc/self/clear_refs`` just before the step, so the
  number is the step's, not the data preparation's.
* ``torch_peak_mb`` (``--profile``, default on): the peak of the bytes held by torch tensors during a second,
  profiled step (``torch.profiler`` with ``profile_memory=True``, timeline of
  ``torch.profiler._memory_profiler``), above what was held when it started, with the categories at that peak:
  activations, gradients, ... as the profiler classifies them (it leaves many tensors "uncategorised", among them
  the index data spconv allocates from C++). Unlike RSS it does not depend on how much freed
  memory the allocator kept from the data preparation, and it includes pages that were reserved but never touched.
* ``index_mb`` (sparse only): the spconv index data the forward pass built and keeps for backward (the ``indice_dict``
  of the output: neighbour pairs per ``indice_key``, output coordinates of strided convs), bytes of distinct storage.
* ``process_peak_mb``: the whole process's ``ru_maxrss`` (imports + data preparation + step). Earlier versions of
  this script reported ``process_peak_mb`` minus the RSS before the step as "step increase": at x2 that was
  dominated by the data preparation (a dense int64 label of the 512 x 512 x 216 grid), not by the step
  (printed as ``old_step_increase_mb`` for comparison).
* On CUDA: ``gpu_peak_mb`` = ``torch.cuda.max_memory_allocated()`` during the steps minus what was allocated before.

Dense runs get an address-space limit (``--dense-limit-gb``); a run that exceeds it is reported as "did not fit" --
a measured outcome, not an estimate.

Run (CPU: 5-7 minutes per input on one core; ``dense_twin`` adds ~3 minutes per step at x1 and is left out here;
the 8 GB limit keeps the full-resolution MONAI UNet from starving a shared machine at x2):

    OMP_NUM_THREADS=1 python benchmarks/sparse_memory.py --input synthetic --channels 8,16,32,64 --strides 2,2,2 \
        --kinds sparse,monai_unet,monai_unet_full --dense-limit-gb 8
    OMP_NUM_THREADS=1 python benchmarks/sparse_memory.py --input ct --kinds sparse,monai_unet,monai_unet_full \
        --dense-limit-gb 8
    OMP_NUM_THREADS=8 python benchmarks/sparse_memory.py --device cuda --dense-limit-gb 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

KINDS = ("sparse", "dense_twin", "monai_unet", "monai_unet_full")


def _edge_shell_input(mask):
    """Dense ``[1, 1, *S]`` edge shell of the bool mask and a ``[1, 1, *S]`` int64 label, padded for the U-Nets."""
    import numpy as np
    import torch

    from monai_fovea.transforms import EdgeShell

    shell = EdgeShell()(torch.from_numpy(np.ascontiguousarray(mask[None])).float())
    del mask
    pad = [(-s) % 8 for s in shell.shape[1:]]  # dense UNets need sizes divisible by their total stride
    shell = torch.nn.functional.pad(shell, [0, pad[2], 0, pad[1], 0, pad[0]])
    zc = shell.shape[-1] // 2
    label = torch.zeros_like(shell, dtype=torch.long)
    label[..., zc:] = 1
    return shell[None], label[None] * (shell[None] > 0)


def _data(name: str, scale: int):
    if name == "ct":
        from monai_fovea.apps.sparse_completion import load_ct_skull

        skull, _ = load_ct_skull()
        if scale > 1:
            skull = skull.repeat(scale, 0).repeat(scale, 1).repeat(scale, 2)
        return _edge_shell_input(skull)
    if name == "synthetic":
        from monai_fovea.data.synthetic import skull_shell

        shell = skull_shell((128 * scale,) * 3, seed=0, thickness=(2.0 * scale, 5.0 * scale)).astype(bool)
        return _edge_shell_input(shell)
    raise ValueError(f"--input must be 'ct' or 'synthetic', got {name!r}.")


def DenseTwin(channels, strides):
    """SparseUNet's layers with dense convolutions (see the module docstring)."""
    import torch
    from torch import nn

    def block(cin, cout):
        return [nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU()]

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            c, n = channels, len(strides)
            self.stem = nn.Sequential(*block(1, c[0]), *block(c[0], c[0]))
            self.down = nn.ModuleList([nn.Sequential(nn.Conv3d(c[i], c[i + 1], s, s, bias=False),
                                                     nn.BatchNorm3d(c[i + 1]), nn.ReLU()) for i, s in enumerate(strides)])
            self.enc = nn.ModuleList([nn.Sequential(*block(c[i + 1], c[i + 1]), *block(c[i + 1], c[i + 1]))
                                      for i in range(n)])
            self.up = nn.ModuleList([nn.Sequential(nn.ConvTranspose3d(c[i + 1], c[i], s, s, bias=False),
                                                   nn.BatchNorm3d(c[i]), nn.ReLU()) for i, s in enumerate(strides)])
            self.dec = nn.ModuleList([nn.Sequential(*block(2 * c[i], c[i]), *block(c[i], c[i])) for i in range(n)])
            self.head = nn.Conv3d(c[0], 2, 1)

        def forward(self, x):
            h = self.stem(x)
            skips = []
            for down, enc in zip(self.down, self.enc):
                skips.append(h)
                h = enc(down(h))
            for i in reversed(range(len(strides))):
                h = self.dec[i](torch.cat([self.up[i](h), skips[i]], 1))
            return self.head(h)

    return Twin()


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _index_data_mb(out) -> dict:
    """Bytes of the spconv index data kept in ``out.indice_dict``: distinct storages (allocated) and the bytes the
    tensors themselves span (used); per key, allocated."""
    import torch

    seen: dict[int, int] = {}
    used = 0
    per_key = {}
    for key, data in out.indice_dict.items():
        key_bytes = 0
        for name in ("out_indices", "indices", "indice_pairs", "indice_pair_num"):
            t = getattr(data, name, None)
            if not isinstance(t, torch.Tensor):
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                continue
            seen[ptr] = t.untyped_storage().nbytes()
            key_bytes += seen[ptr]
            used += t.nelement() * t.element_size()
        per_key[key] = round(key_bytes / 2**20, 2)
    return {"index_mb": sum(seen.values()) / 2**20, "index_used_mb": used / 2**20, "index_per_key_mb": per_key}


def _profiled_peak(train_step, device: str) -> dict:
    """Peak bytes held by torch tensors during ``train_step()`` above those held when it started, and the categories
    at that peak (``torch.profiler._memory_profiler``)."""
    import numpy as np
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, MemoryProfileTimeline

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True) as prof:
        train_step()
    dev = "cuda:0" if device == "cuda" else device
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(dev)
    sizes = np.asarray(sizes, dtype=np.int64)
    total = sizes.sum(1)
    i = int(total.argmax())
    names = {v + 1: (c.name.lower() if c is not None else "uncategorised") for c, v in _CATEGORY_TO_INDEX.items()}
    cats = {names[j]: round(float(sizes[i, j] - sizes[0, j]) / 2**20, 1) for j in names}
    return {"torch_peak_mb": float(total[i] - total[0]) / 2**20, "torch_peak_categories_mb": cats}


def worker(kind: str, scale: int, device: str, data: str, channels, strides, profile: bool) -> dict:
    import gc

    import torch

    torch.manual_seed(0)
    x, label = _data(data, scale)
    active = int((x > 0).sum())
    grid = int(x[0, 0].numel())
    index_info: dict = {}
    if kind == "sparse":
        from monai_fovea.networks import SparseUNet
        from monai_fovea.networks.sparse_blocks import dense_to_spconv

        net = SparseUNet(3, 1, 2, channels=channels, strides=strides).to(device)
        inp = dense_to_spconv(x.to(device))
        idx = inp.indices.long()
        target = label.to(device)[idx[:, 0], 0, idx[:, 1], idx[:, 2], idx[:, 3]]
        del idx

        def step():
            out = net(inp)
            if not index_info:
                index_info.update(_index_data_mb(out))
            return torch.nn.functional.cross_entropy(out.features, target)
    else:
        if kind.startswith("monai_unet"):
            from monai.networks.nets import UNet

            # monai_unet_full: first stride 1, so like SparseUNet it keeps a full-resolution first level
            s = (1,) + tuple(strides[1:]) if kind == "monai_unet_full" else tuple(strides)
            net = UNet(3, 1, 2, channels=channels, strides=s, num_res_units=0).to(device)
        else:
            net = DenseTwin(channels, strides).to(device)
        xd, ld = x.to(device), label[:, 0].to(device)

        def step():
            return torch.nn.functional.cross_entropy(net(xd), ld)

    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    del x, label
    gc.collect()
    prep_peak = _status_mb("VmHWM")
    before = _status_mb("VmRSS")
    reset_ok = _reset_peak_rss()
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
    step_peak = _status_mb("VmHWM") if reset_ok else float("nan")
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"kind": kind, "input": data, "scale": scale, "grid_voxels": grid, "active_voxels": active,
              "step_rss_mb": step_peak - before, "rss_before_mb": before, "prep_peak_mb": prep_peak,
              "process_peak_mb": max(process_peak, prep_peak), "old_step_increase_mb": max(process_peak, prep_peak) - before,
              "seconds": seconds}
    if device.startswith("cuda"):
        result["gpu_peak_mb"] = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    if profile:
        try:
            result.update(_profiled_peak(train_step, device))
        except Exception as err:  # the profiler's memory timeline is private torch API: keep the measured row
            result["profile_failed"] = repr(err)[:200]
    result.update(index_info)
    return result


def _run_child(kind: str, scale: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--scale", str(scale), "--device", args.device,
           "--input", args.input, "--channels", args.channels, "--strides", args.strides]
    if not args.profile:
        cmd.append("--no-profile")
    limit_gb = args.dense_limit_gb if kind != "sparse" else None
    if limit_gb:
        cmd += ["--limit-gb", str(limit_gb)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if args.malloc_mmap_threshold > 0:  # glibc: fixed threshold, so freed large buffers go back to the OS at once
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or "").strip().splitlines()[-1:] or ["?"]
    return {"kind": kind, "scale": scale, "failed": f"exit {proc.returncode}: {tail[0][:200]}"}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--input", default="ct", choices=["ct", "synthetic"])
    p.add_argument("--channels", default="8,16,32")
    p.add_argument("--strides", default="2,2")
    p.add_argument("--dense-limit-gb", type=float, default=20.0)
    p.add_argument("--scales", default="1,2")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--malloc-mmap-threshold", type=int, default=131072,
                   help="MALLOC_MMAP_THRESHOLD_ of the workers (bytes; 0 = glibc's default, dynamic threshold)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the profiled second step (torch_peak_mb and its categories)")
    p.add_argument("--worker", choices=KINDS)
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--limit-gb", type=float)
    args = p.parse_args()
    channels, strides = _ints(args.channels), _ints(args.strides)
    if len(channels) != len(strides) + 1:
        p.error("--channels needs one entry more than --strides")
    if args.worker:
        if args.limit_gb:
            limit = int(args.limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(worker(args.worker, args.scale, args.device, args.input, channels, strides, args.profile)),
              flush=True)
        return
    gpu = args.device.startswith("cuda")
    scales = _ints(args.scales)
    kinds = args.kinds.split(",")
    print(f"input {args.input}, channels {channels}, strides {strides}, device {args.device}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}, "
          f"MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold or 'glibc default'}", flush=True)
    rows = {}
    for scale in scales:
        for kind in kinds:
            rows[(kind, scale)] = r = _run_child(kind, scale, args)
            print(json.dumps(r), flush=True)

    key = "gpu_peak_mb" if gpu else "step_rss_mb"
    print(f"\n{'network':16s} scale {'grid voxels':>12s} {'active':>10s} {'step RSS MB':>11s} {'torch peak MB':>13s}"
          f"{' GPU peak MB' if gpu else ''} {'index MB':>8s} {'process peak MB':>15s} {'old step incr.':>14s} {'s/step':>7s}")
    for (kind, scale), r in rows.items():
        if "failed" in r:
            print(f"{kind:16s} x{scale}    did not fit / failed (limit {args.dense_limit_gb:g} GB): {r['failed']}")
            continue
        g = f" {r['gpu_peak_mb']:11.0f}" if gpu else ""
        print(f"{kind:16s} x{scale}   {r['grid_voxels']:>12,d} {r['active_voxels']:>10,d} {r['step_rss_mb']:>11.0f} "
              f"{r.get('torch_peak_mb', float('nan')):>13.0f}{g} {r.get('index_mb', float('nan')):>8.1f} "
              f"{r['process_peak_mb']:>15.0f} {r['old_step_increase_mb']:>14.0f} {r['seconds']:>7.2f}")
    for (kind, scale), r in rows.items():
        if "torch_peak_categories_mb" in r:
            cats = ", ".join(f"{k} {v:g}" for k, v in r["torch_peak_categories_mb"].items() if abs(v) >= 0.05)
            extra = f"; index data per key (MB allocated): {r['index_per_key_mb']}, used {r['index_used_mb']:.1f} MB" \
                if "index_per_key_mb" in r else ""
            print(f"{kind} x{scale} torch peak by category (MB): {cats}{extra}")

    def ratio(a, b, k):
        ra, rb = rows.get(a, {}), rows.get(b, {})
        return ra[k] / rb[k] if k in ra and k in rb and rb[k] else float("nan")

    metrics = ([key] if gpu else [key, "torch_peak_mb"]) + ["seconds"]
    print()
    for dense in kinds:
        if dense == "sparse":
            continue
        for scale in scales:
            vals = ", ".join(f"{m} {ratio(('sparse', scale), (dense, scale), m):.3f}" for m in metrics)
            print(f"sparse / {dense} at x{scale}: {vals}")
    if len(scales) >= 2:
        lo, hi = scales[0], scales[-1]
        for kind in kinds:
            vals = ", ".join(f"{m} {ratio((kind, hi), (kind, lo), m):.2f}"
                             for m in metrics + ["active_voxels", "grid_voxels"])
            print(f"{kind} x{hi} / x{lo}: {vals}")


if __name__ == "__main__":
    main()
