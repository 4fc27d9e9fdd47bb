"""Training entry points of segment-then-segment on synthetic small objects: loss decreases, the saved checkpoint is
the best validation epoch, the fine net can start from the coarse one, 3D works."""

import numpy as np
import torch

from monai_fovea.apps.segment_then_segment import build_unet, evaluate, fine_train_transform, train
from monai_fovea.data.synthetic import small_objects


def _items(size, n, seeds, radius=(4.0, 8.0)):
    items = []
    for s in seeds:
        img, inst = small_objects(size, num_objects=n, radius=radius, seed=s)
        items.append({"image": np.clip(img, 0, 1), "label": (inst > 0).astype(np.float32)})
    return items


def test_train_2d_loss_decreases_and_best_checkpoint(tmp_path):
    train_items, val_items = _items((128, 128), 12, [0, 1]), _items((128, 128), 12, [2])
    out = train(train_items, val_items, tmp_path / "models", coarse_size=32, fine_size=32, tile_size=128,
                features=(8, 8, 16, 16, 32, 8), coarse_epochs=5, fine_epochs=5, samples_per_epoch=32, lr=1e-3,
                progress=False, init_fine_from_coarse=False)
    for stage in ("coarse", "fine"):
        loss = out[stage]["loss"]
        assert np.mean(loss[-2:]) < np.mean(loss[:2]), loss
    coarse = build_unet(2, 1, (8, 8, 16, 16, 32, 8))
    fine = build_unet(2, 1, (8, 8, 16, 16, 32, 8))
    coarse.load_state_dict(torch.load(tmp_path / "models" / "coarse.pt", weights_only=True))
    fine.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
    # the files hold the best epochs: re-evaluating them gives the best validation DSC of each history
    scores = evaluate(val_items, coarse, fine, 32, 32)
    assert abs(scores["coarse"]["dice"] - max(out["coarse"]["val_dice"])) < 1e-5
    assert abs(scores["sts"]["dice"] - max(out["fine"]["val_dice"])) < 1e-5
    assert scores == out["val"]


def test_fine_transform_crops_a_component():
    img, inst = small_objects((96, 96), num_objects=3, radius=(3.0, 4.0), seed=4)
    t = fine_train_transform((32, 32), max_shift=0)
    t.set_random_state(0)
    out = t({"image": img, "label": (inst > 0).astype(np.float32)})
    assert out["image"].shape == (1, 32, 32) and out["label"].shape == (1, 32, 32)
    assert set(torch.as_tensor(out["label"]).unique().tolist()) == {0.0, 1.0}
    assert int(out["box"][2] - out["box"][0]) == int(out["box"][3] - out["box"][1])  # square box


def test_train_3d_writes_3d_checkpoints(tmp_path):
    items = _items((64, 64, 64), 6, [0], radius=(3.0, 6.0))
    out = train(items, items, tmp_path, coarse_size=32, fine_size=32, tile_size=64, spatial_dims=3,
                features=(2, 2, 4, 4, 4, 2), coarse_epochs=1, fine_epochs=1, samples_per_epoch=2, batch_size=2,
                progress=False, init_fine_from_coarse=False)
    sd = torch.load(tmp_path / "model.pt", weights_only=True)
    assert sd["conv_0.conv_0.conv.weight"].shape == (2, 1, 3, 3, 3)
    assert set(out["val"]) == {"coarse", "sts"} and 0.0 <= out["val"]["sts"]["dice"] <= 1.0


def test_segmentation_scores_hand_computed():
    from monai_fovea.metrics import segmentation_scores

    pred = torch.zeros(3, 1, 4, 4)
    target = torch.zeros(3, 1, 4, 4)
    pred[0, 0, 0, :3] = 1  # 3 predicted, 2 of them right, 1 target pixel missed
    target[0, 0, 0, 1:3] = 1
    target[0, 0, 1, 0] = 1
    target[1, 0, 2, 2] = 1  # nothing predicted: DSC 0, precision 1 (no false positive), recall 0
    s = segmentation_scores(pred, target)  # image 2: both empty -> all 1
    assert torch.allclose(s["dice"], torch.tensor([4 / 6, 0.0, 1.0]))
    assert torch.allclose(s["iou"], torch.tensor([2 / 4, 0.0, 1.0]))
    assert torch.allclose(s["precision"], torch.tensor([2 / 3, 1.0, 1.0]))
    assert torch.allclose(s["recall"], torch.tensor([2 / 3, 0.0, 1.0]))
