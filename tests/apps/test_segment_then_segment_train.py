"""Segment-then-segment training through the bundle's MONAI workflow (``train`` runs ``configs/train.json``) on
synthetic small objects: loss decreases, the saved checkpoints are the best validation epochs, 3D works; the
method-specific pieces (coarse-only inferer, 3D split with a validation slab)."""

import numpy as np
import torch

from monai_fovea.apps.segment_then_segment import (
    CoarseMaskInferer,
    build_unet,
    evaluate,
    fine_train_transform,
    repeat_items,
    train,
)
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
                init_fine_from_coarse=False)
    for stage in ("coarse", "fine"):
        loss = out[stage]["loss"]
        assert np.mean(loss[-2:]) < np.mean(loss[:2]), loss
    coarse = build_unet(2, 1, (8, 8, 16, 16, 32, 8))
    fine = build_unet(2, 1, (8, 8, 16, 16, 32, 8))
    coarse.load_state_dict(torch.load(tmp_path / "models" / "coarse.pt", weights_only=True))
    fine.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
    # the files hold the best epochs: re-evaluating them (per-image scores in Python, not MONAI's MeanDice) gives
    # the best validation DSC of each history
    assert len(out["coarse"]["val_dice"]) == len(out["fine"]["val_dice"]) == 5
    scores = evaluate(val_items, coarse, fine, 32, 32)
    assert abs(scores["coarse"]["dice"] - max(out["coarse"]["val_dice"])) < 1e-5
    assert abs(scores["sts"]["dice"] - max(out["fine"]["val_dice"])) < 1e-5
    assert out["fine"]["best_val_dice"] == max(out["fine"]["val_dice"])
    assert out["fine"]["val_dice"][out["fine"]["best_epoch"] - 1] == out["fine"]["best_val_dice"]


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
                init_fine_from_coarse=False)
    sd = torch.load(tmp_path / "model.pt", weights_only=True)
    assert sd["conv_0.conv_0.conv.weight"].shape == (2, 1, 3, 3, 3)
    coarse, fine = build_unet(3, 1, (2, 2, 4, 4, 4, 2)), build_unet(3, 1, (2, 2, 4, 4, 4, 2))
    coarse.load_state_dict(torch.load(tmp_path / "coarse.pt", weights_only=True))
    fine.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    scores = evaluate(items, coarse, fine, 32, 32)
    assert abs(scores["sts"]["dice"] - out["fine"]["best_val_dice"]) < 1e-5


def test_repeat_items_and_coarse_mask_inferer():
    from monai_fovea.inferers import SegmentThenSegmentInferer

    assert [d["i"] for d in repeat_items([{"i": 0}, {"i": 1}, {"i": 2}], 7)] == [0, 1, 2, 0, 1, 2, 0]
    net = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(20.0)
        net.bias.fill_(-10.0)  # sigmoid(20 x - 10) > 0.5 where the downscaled image > 0.5
    sts = SegmentThenSegmentInferer(coarse_size=None, coarse_scale=4, fine_size=16, coarse_min_side=8)
    x = torch.zeros(1, 1, 64, 64)
    x[..., 16:48, 8:40] = 1.0
    mask = CoarseMaskInferer(sts)(x, net)
    assert torch.equal(mask, sts.coarse_mask(x, net))
    # a 4x-aligned rectangle survives downscaling and bilinear upsampling except its 4 corner pixels, which get
    # 0.625 * 0.625 = 0.39 < 0.5 (edge pixels get 0.625)
    expected = x.clone()
    expected[..., [16, 16, 47, 47], [8, 39, 8, 39]] = 0.0
    assert torch.equal(mask, expected)


def test_aal_split_has_a_validation_slab_disjoint_from_training():
    from monai_fovea.apps.segment_then_segment import (
        AAL_VAL_START,
        aal_structures_split,
    )

    full = aal_structures_split("train_full")[0]
    tr, va, te = (aal_structures_split(p)[0] for p in ("train", "val", "test"))
    assert full["image"].shape == va["image"].shape == te["image"].shape == (1, 76, 61, 64)
    assert tr["image"].shape == (1, 76, AAL_VAL_START, 64) and AAL_VAL_START == 44
    # training = the slices before the cut, image and labels
    assert np.array_equal(tr["image"], full["image"][:, :, :44]) and np.array_equal(tr["label"], full["label"][:, :, :44])
    # validation scores the slices from the cut on: its label and score mask are zero on every training slice
    assert np.array_equal(va["image"], full["image"])
    assert va["score_mask"][:, :, :44].sum() == 0 and va["score_mask"][:, :, 44:].min() == 1
    assert np.array_equal(va["label"], full["label"] * va["score_mask"])
    # labelled voxels: 5051 in training + 1038 in validation = the 6089 of the half (measured)
    assert (int(tr["label"].sum()), int(va["label"].sum()), int(full["label"].sum())) == (5051, 1038, 6089)
