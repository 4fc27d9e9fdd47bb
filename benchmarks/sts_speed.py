"""Inference time of segment-then-segment relative to a single U-Net at the same network input size, as the number
of objects (= crops) grows: 1, 10, 100.

Both stages are real MONAI BasicUNets (the bundle's size, features 8-16-32-64-128-8) and do their full forward
pass; to make the number of crops equal the number of objects, whatever the (untrained) weights, the coarse net's
*output* is replaced by the thresholded input (``OracleOutput``) after its forward pass has run. Compared, per
image of 256² with S = 64 (4x downscale):
  single  -- one U-Net forward on the image downscaled to S, upsampled back (the baseline);
  sts     -- SegmentThenSegmentInferer: coarse forward, boxes, one batched crop+resize, fine net on batches of 32
             crops, paste;
  loop    -- the reference's way: one fine forward per crop, each crop resized separately (``SpatialCrop`` +
             ``Resize``), pasted one by one.
Timings: median of ``--repeats`` runs after one warm-up, single thread on CPU (``--device cuda`` on a GPU).

Run:
    OMP_NUM_THREADS=1 python benchmarks/sts_speed.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Resize, SpatialCrop

from monai_fovea.apps.segment_then_segment import build_unet
from monai_fovea.data.synthetic import small_objects
from monai_fovea.inferers import SegmentThenSegmentInferer


class OracleOutput(torch.nn.Module):
    """Runs the U-Net (for its cost) but returns logits of the thresholded input, so boxes = objects."""

    def __init__(self, unet: torch.nn.Module, level: float = 0.2):
        super().__init__()
        self.unet, self.level = unet, level

    def forward(self, x):
        self.unet(x)
        return (x[:, :1] - self.level) * 50.0


def timed(fn, repeats: int, device: str) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@torch.no_grad()
def loop_reference(image, boxes, fine_net, size):
    """One forward per crop, each crop resized on its own (the reference's inference)."""
    out = torch.zeros_like(image[:, :1])
    for b in boxes.tolist():
        crop = Resize((size, size), mode="bilinear")(SpatialCrop(roi_start=b[:2], roi_end=b[2:])(image[0]))
        prob = torch.sigmoid(fine_net(torch.as_tensor(crop)[None]))
        back = F.interpolate(prob, size=(b[2] - b[0], b[3] - b[1]), mode="bilinear", align_corners=False)
        region = out[:, :, b[0] : b[2], b[1] : b[3]]
        out[:, :, b[0] : b[2], b[1] : b[3]] = torch.maximum(region, back)
    return out > 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", nargs="+", type=int, default=[1, 10, 100])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dev, size = args.device, args.input_size
    coarse = OracleOutput(build_unet(2, 1)).to(dev).eval()
    fine = build_unet(2, 1).to(dev).eval()
    inferer = SegmentThenSegmentInferer(coarse_size=size, fine_size=size, sw_batch_size=32)
    print(f"image {args.image_size}², network input {size}², device {dev}, median of {args.repeats}")
    print("| objects | crops | single U-Net (ms) | segment-then-segment (ms) | ratio | per-crop loop (ms) | loop ratio |")
    print("|---|---|---|---|---|---|---|")
    for n in args.objects:
        _, inst = small_objects((args.image_size,) * 2, num_objects=n, radius=(4.0, 6.0), seed=n)
        image = torch.as_tensor((inst > 0).astype(np.float32))[None].to(dev)
        coarse_only = lambda: inferer.coarse_mask(image, coarse.unet)  # noqa: E731
        sts = lambda: inferer(image, coarse, fine)  # noqa: E731
        _, boxes = inferer(image, coarse, fine, return_boxes=True)
        loop = lambda: loop_reference(image, boxes[0], fine, size)  # noqa: E731
        t_single, t_sts, t_loop = (timed(f, args.repeats, dev) for f in (coarse_only, sts, loop))
        print(f"| {n} | {len(boxes[0])} | {t_single * 1e3:.1f} | {t_sts * 1e3:.1f} | {t_sts / t_single:.2f} | "
              f"{t_loop * 1e3 + t_single * 1e3:.1f} | {(t_loop + t_single) / t_single:.2f} |", flush=True)


if __name__ == "__main__":
    main()
