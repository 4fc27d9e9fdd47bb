"""3D segment-then-segment vs a U-Net on the uniformly downscaled volume, on a real MRI: small deep structures of
the AAL atlas on the ``mri_ch2`` T1 head (181 × 217 × 181, 1 mm).

Task: binary segmentation of the union of the AAL amygdala (41, 42), pallidum (75, 76) and Heschl gyrus (79, 80)
labels — six structures of 1 700-2 300 voxels (about 12-15 mm across) in a 7-million-voxel head.

Held-out split (no voxel in both): train = right hemisphere (array x >= 91, RAS x > 0, AAL's even labels), test =
left hemisphere (x < 90), mirrored along x so that it looks like a right one. Both halves are cut to the same field of view, the
box around the six structures plus 8 voxels (76 × 61 × 64 voxels), to keep CPU training short; the structures
fill 2 % of it. There is one subject only: checkpoints are selected on the training half (no separate validation
volume), and the test set is 3 structures — a small, stated sample.

Both stages are MONAI ``UNet`` (3 downsamplings, channels 8-16-32-64, instance norm), trained with
``monai_fovea.apps.segment_then_segment.train`` (soft Dice, Adam 3e-3, 150 epochs × 8 samples per stage); the
coarse net sees the half volume downscaled by 2 or 4, the fine net 32³ crops of each structure. The coarse input is the half volume resized to the multiple of 8 nearest to
``size / factor`` per axis (MONAI UNet needs sides divisible by 8), so "4×" and "2×" are approximate.

Run (CPU, about 15 minutes):
    OMP_NUM_THREADS=1 python benchmarks/sts_accuracy_3d.py
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from monai.networks.nets import UNet

from monai_fovea.apps.segment_then_segment import AAL_STRUCTURES as STRUCTURES  # noqa: F401 (documented labels)
from monai_fovea.apps.segment_then_segment import aal_structures_split, evaluate, train


def make_net() -> torch.nn.Module:
    return UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16, 32, 64), strides=(2, 2, 2),
                num_res_units=1, norm="instance")


def halves():
    """(train item, test item): the split of ``aal_structures_split`` (the bundle's ``train_3d.json`` uses it too)."""
    return aal_structures_split("train_full")[0], aal_structures_split("test")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", nargs="+", type=int, default=[4, 2])
    parser.add_argument("--fine-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--samples-per-epoch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_item, test_item = halves()
    spatial = train_item["image"].shape[1:]
    print(f"half volume {spatial}, train structures {int(train_item['label'].sum())} voxels, "
          f"test {int(test_item['label'].sum())} voxels")
    print("| downscale | coarse input | fine input | DSC: downscaled U-Net → STS | precision | recall | s |")
    print("|---|---|---|---|---|---|---|")
    for f in args.factors:
        coarse = tuple(8 * max(1, int(round(s / f / 8))) for s in spatial)  # MONAI UNet: sides divisible by 8
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            train([train_item], [train_item], tmp, coarse_size=coarse, fine_size=args.fine_size, tile_size=spatial,
                  spatial_dims=3, coarse_epochs=args.epochs, fine_epochs=args.epochs,
                  samples_per_epoch=args.samples_per_epoch, batch_size=2, lr=3e-3, progress=False,
                  init_fine_from_coarse=True, network_fn=make_net)
            nets = [make_net(), make_net()]
            nets[0].load_state_dict(torch.load(f"{tmp}/coarse.pt", weights_only=True))
            nets[1].load_state_dict(torch.load(f"{tmp}/model.pt", weights_only=True))
        s = evaluate([test_item], nets[0], nets[1], coarse, args.fine_size)
        print(f"| {f}× | {'×'.join(map(str, coarse))} | {args.fine_size}³ | {s['coarse']['dice']:.3f} → "
              f"{s['sts']['dice']:.3f} | {s['coarse']['precision']:.3f} → {s['sts']['precision']:.3f} | "
              f"{s['coarse']['recall']:.3f} → {s['sts']['recall']:.3f} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
