"""The foveation training entry point: the loss falls on a tiny synthetic set; checkpoints and logs are written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from monai_fovea.apps.foveation import evaluate_foveation, load_item, train_foveation
from monai_fovea.data.synthetic import fov_tradeoff
from monai_fovea.networks import FoveatedSegmenter

GEOM = dict(num_fine=4, num_context=2, fine_size=8, blob_radius=8, ring_gap=6, ring_width=3)


def _model(mode="soft"):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 5, 1))
    return FoveatedSegmenter(backbone, [16, 32, 64], 16, spatial_dims=2, in_channels=1, mode=mode, stride=8)


def test_training_lowers_loss_and_writes_checkpoints(tmp_path):
    train = [fov_tradeoff((96, 96), seed=s, **GEOM) for s in range(3)]
    val = [fov_tradeoff((96, 96), seed=100, **GEOM)]
    model = _model()
    head_before = [p.detach().clone() for p in model.head.parameters()]
    hist = train_foveation(model, train, val, num_classes=5, num_iterations=60, lr=5e-3, balanced=True,
                           output_dir=tmp_path, progress=False, seed=0, val_interval=30)
    loss = np.array(hist["loss"])
    assert len(loss) == 60
    assert loss[-10:].mean() < 0.8 * loss[:10].mean()
    # joint training: the head moved too
    assert any(not torch.equal(a, b) for a, b in zip(head_before, model.head.parameters()))
    assert [s for s, _ in hist["val"]] == [30, 60]
    vals = [v for _, v in hist["val"]]
    assert 0.0 <= hist["best_mean_iou"] <= 1.0 and hist["best_mean_iou"] == max(vals)
    assert hist["last_val"] == {"mean_iou": vals[-1], "step": 60}
    for name in ("model.pt", "model_last.pt"):  # best by validation mean IoU, and last
        state = torch.load(tmp_path / name, weights_only=True)
        assert set(state) == set(model.state_dict())
    torch.testing.assert_close(torch.load(tmp_path / "model_last.pt", weights_only=True), model.state_dict())
    if vals[-1] > vals[0]:  # the best is the last validated model
        torch.testing.assert_close(torch.load(tmp_path / "model.pt", weights_only=True), model.state_dict())
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    # the learning rate decayed as poly(0.9) over the 60 steps, stepped every iteration
    resume = torch.load(tmp_path / "resume" / "resume.pt", weights_only=True)
    assert resume["lr_scheduler"]["last_epoch"] == 60 and resume["trainer"]["iteration"] == 60
    assert resume["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0)  # (1 - 60/60) ** 0.9


def test_evaluate_perfect_model_gives_iou_one():
    class Oracle(nn.Module):
        """Logits from the input intensity sign: exact on an image whose classes are intensity bands."""

        def forward(self, x):
            return torch.cat([-x.abs(), x - 0.5], dim=1) * 100

    img = np.zeros((1, 32, 32), np.float32)
    img[0, 8:20, 4:30] = 1.0
    lab = (img > 0.5).astype(np.int64)
    model = FoveatedSegmenter(Oracle(), [8, 16], 8, spatial_dims=2, in_channels=1, mode="fixed", stride=8)
    res = evaluate_foveation(model, [{"image": img, "label": lab}], num_classes=2)
    assert res["iou"] == [1.0, 1.0] and res["mean_iou"] == 1.0


def test_load_item_from_files_and_errors(tmp_path):
    import nibabel as nib

    arr = np.arange(24, dtype=np.float32).reshape(4, 6)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image((arr > 10).astype(np.uint8), np.eye(4)), tmp_path / "lab.nii.gz")
    image, label = load_item({"image": str(tmp_path / "img.nii.gz"), "label": tmp_path / "lab.nii.gz"})
    assert image.shape == (1, 4, 6) and torch.equal(image[0], torch.as_tensor(arr))
    assert label.dtype == torch.int64 and int(label.sum()) == 13
    with pytest.raises(ValueError, match="label shape"):
        load_item({"image": np.zeros((1, 4, 4)), "label": np.zeros((1, 5, 4))})
    with pytest.raises(ValueError, match="train_data"):
        train_foveation(_model(), [])


def _ddp_worker(rank, world, init_file, out_dir, result_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train = [fov_tradeoff((64, 64), seed=s, num_fine=2, num_context=1, fine_size=8, blob_radius=6, ring_gap=4,
                              ring_width=2) for s in range(4)]
        model = _model()
        hist = train_foveation(model, train, num_iterations=4, output_dir=out_dir, progress=False, seed=0)
        assert hist["loss"] and len(hist["loss"]) == 4
        torch.save(model.state_dict(), f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_training_with_gloo_keeps_ranks_in_sync(tmp_path):
    import torch.multiprocessing as mp

    out_dir, result_dir = tmp_path / "out", tmp_path / "res"
    result_dir.mkdir()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(out_dir), str(result_dir)), nprocs=2, join=True)
    s0 = torch.load(result_dir / "rank0.pt", weights_only=True)
    s1 = torch.load(result_dir / "rank1.pt", weights_only=True)
    init = _model().state_dict()
    for k in s0:
        if "running" in k or "num_batches" in k:
            continue  # BatchNorm statistics are per rank (not synchronised without SyncBatchNorm)
        torch.testing.assert_close(s0[k], s1[k])  # gradients all-reduced: identical weights on both ranks
    assert any(not torch.equal(s0[k], init[k]) for k in s0)  # and they trained
    assert (out_dir / "model_last.pt").is_file()  # written once, by rank 0


def test_prepare_batch_cuts_the_predicted_label_region_and_takes_one_image():
    from monai_fovea.apps.foveation import FoveatedPrepareBatch

    model = _model()  # patch sizes [16, 32, 64] -> 16 px, stride 8
    label = torch.arange(32 * 32).reshape(1, 1, 32, 32)
    centers = torch.tensor([[[8, 8], [16, 24]]])
    prep = FoveatedPrepareBatch(model, ignore_index=-1)
    image, target, (c,), kwargs = prep({"image": torch.zeros(1, 1, 32, 32), "label": label, "centers": centers})
    assert image.shape == (1, 1, 32, 32) and torch.equal(c, centers[0]) and kwargs == {}
    # the smallest field of view (16 px) around each centre, at the output size (16 px): the plain crop
    assert torch.equal(target[0], label[0, 0, 0:16, 0:16]) and torch.equal(target[1], label[0, 0, 8:24, 16:32])
    with pytest.raises(ValueError, match="one image"):
        prep({"image": torch.zeros(2, 1, 32, 32), "label": label.repeat(2, 1, 1, 1), "centers": centers.repeat(2, 1, 1)})


def test_dataset_mean_iou_ignores_label_and_excludes_classes():
    from monai_fovea.apps.foveation import DatasetMeanIoU

    m = DatasetMeanIoU(3, exclude=(0,), ignore_index=255)
    m.reset()
    pred = torch.tensor([[0, 1, 1, 2, 2]])
    label = torch.tensor([[0, 1, 2, 2, 255]])
    m.update(([pred], [label]))
    # without the ignored pixel: class 1: 1 / 2, class 2: 1 / 2; class 0 excluded from the mean
    assert m.compute() == pytest.approx(0.5)
    # a perfect second image: dataset-level counts, class 1: TP 1 + 2, FP 1 -> 3/4; class 2: TP 1 + 2, FN 1 -> 3/4
    m.update((pred[None], torch.tensor([[[0, 1, 1, 2, 2]]])))
    assert m.compute() == pytest.approx(0.75)
