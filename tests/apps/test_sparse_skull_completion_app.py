"""Skull-completion app: post-processing by hand, input/target construction, a short real training run."""

import numpy as np
import pytest
import torch

pytest.importorskip("spconv.pytorch", reason="needs the 'spconv' package (pip install spconv)")

from monai_fovea.apps import sparse_completion as sc  # noqa: E402
from monai_fovea.data.synthetic import skull_shell  # noqa: E402


def test_postprocess_subtracts_input_opens_and_keeps_largest_component():
    defective = np.zeros((20, 20, 20), bool)
    defective[:, :, :5] = True
    occ = defective.copy()
    occ[5:10, 5:10, 5:10] = True  # the implant: a 5^3 cube (survives opening)
    occ[15:17, 15:17, 15:17] = True  # a 2^3 blob: removed by the opening (cross structure)
    occ[0:3, 15:19, 12:19] = True  # a second, smaller component that survives the opening
    implant = sc.postprocess_implant(torch.from_numpy(occ), defective)
    # opening with the 6-neighbour cross: the 5^3 cube erodes to 3^3 and dilates back without its 12 edges and
    # 8 corners (125 - 36 - 8 = 81 voxels); the 3x4x7 box comes back with 44 voxels, so it is the smaller one
    g = np.indices((5, 5, 5))
    on_boundary = ((g == 0) | (g == 4)).sum(0)
    expected = np.zeros_like(occ)
    expected[5:10, 5:10, 5:10] = on_boundary <= 1
    assert expected.sum() == 81
    assert np.array_equal(implant, expected)
    assert not sc.postprocess_implant(np.zeros_like(occ), defective).any()


def test_completion_target_is_shell_plus_implant():
    defective = np.zeros((9, 9, 9), bool)
    defective[2:7, 2:7, 2:7] = True  # 125 voxels, shell 98
    implant = np.zeros_like(defective)
    implant[0, 0, 0] = True
    shell, coords = sc.completion_target(defective, implant)
    assert shell.shape == (1, 1, 9, 9, 9) and shell.sum() == 98
    assert coords.shape == (99, 4) and coords.dtype == torch.int32
    assert coords[:, 0].eq(0).all() and [0, 0, 0, 0] in coords.tolist()


def test_defect_case_is_a_partition_of_the_skull():
    skull = skull_shell((40, 40, 32), seed=0).astype(bool)
    case = sc.make_defect_case(skull, 3, (4, 6))
    assert np.array_equal(case["defective"] | case["implant"], skull)
    assert not (case["defective"] & case["implant"]).any() and case["implant"].sum() > 0


def test_multilevel_loss_of_the_workflow_equals_the_networks_own_loss():
    """prepare_completion_batch + CompletionLevels + MultiLevelOccupancyLoss (what train.json declares) compute
    exactly SparseCompletionNet.loss (the seed's loss, which the shipped weights were trained with)."""
    from monai_fovea.apps.skull_training import (
        CompletionLevels,
        MultiLevelOccupancyLoss,
        prepare_completion_batch,
    )
    from monai_fovea.networks.sparse_blocks import dense_to_spconv

    case = sc.make_defect_case(skull_shell((32, 32, 24), seed=1, thickness=(3, 5)).astype(bool), 2, (4, 6))
    shell, coords = sc.completion_target(case["defective"], case["implant"])
    label = torch.zeros_like(shell, dtype=torch.uint8)
    label[0, 0][tuple(coords[:, 1:].long().t())] = 1
    torch.manual_seed(0)
    model = sc.build_network((2, 4, 4)).train()
    x, target, args, kwargs = prepare_completion_batch({"image": shell, "label": label})
    assert torch.equal(target, coords) and args == (target,) and kwargs == {}
    assert torch.equal(x.indices, dense_to_spconv(shell).indices)
    loss_fn = MultiLevelOccupancyLoss(num_levels=2)
    with torch.no_grad():
        ours = loss_fn(CompletionLevels(model)(x, *args), target)
        theirs, per_level = model.net.loss(dense_to_spconv(shell), coords)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    assert loss_fn.last_per_level == pytest.approx([float(v) for v in per_level], rel=1e-6)
    assert len(per_level) == 2 and float(ours) > 0


def test_skull_choice_draws_the_real_skull_with_real_fraction():
    from monai_fovea.apps.skull_training import RandSkullChoiced

    skulls = [np.full((2, 2, 2), True), np.zeros((3, 3, 3), bool), np.zeros((4, 4, 4), bool)]
    pick = RandSkullChoiced(skulls, real_fraction=0.75).set_random_state(0)
    shapes = [pick({})["complete"].shape for _ in range(2000)]
    real = sum(s == (1, 2, 2, 2) for s in shapes) / len(shapes)
    assert real == pytest.approx(0.75, abs=0.03)  # binomial sd ~0.01
    others = [s for s in shapes if s != (1, 2, 2, 2)]
    assert {(1, 3, 3, 3), (1, 4, 4, 4)} == set(others)
    assert abs(others.count((1, 3, 3, 3)) - others.count((1, 4, 4, 4))) < 0.2 * len(others)
    assert pick({})["complete"].dtype == np.uint8
    assert all(RandSkullChoiced(skulls, real_fraction=1.0)({})["complete"].shape == (1, 2, 2, 2) for _ in range(20))
    with pytest.raises(ValueError, match="real_fraction"):
        RandSkullChoiced(skulls, real_fraction=1.5)
    with pytest.raises(ValueError, match="skulls"):
        RandSkullChoiced([])


def test_implant_metrics_writer_scores_per_case_and_per_skull(tmp_path):
    import json
    from types import SimpleNamespace

    from monai_fovea.apps.skull_training import ImplantMetricsWriter

    implant = np.zeros((1, 12, 12, 12), np.float32)
    implant[0, 4:8, 4:8, 8:12] = 1  # 64 voxels
    defective = np.zeros_like(implant)
    defective[0, :, :, 6:8] = 1
    defective[0, 4:8, 4:8, 6:8] = 0
    half = implant.copy()
    half[0, 4:6] = 0  # 32 of the 64 voxels: DSC 2 * 32 / (32 + 64) = 2/3
    writer = ImplantMetricsWriter(tmp_path, spacing=(1.0, 1.0, 2.0))
    engine = SimpleNamespace(state=SimpleNamespace(metrics={}, batch=[], output=[]))
    for name, pred in (("a/defect0", implant), ("a/defect1", half), ("b/defect0", np.zeros_like(implant))):
        engine.state.batch = [{"name": name, "defective": torch.from_numpy(defective)}]
        engine.state.output = [{"pred": torch.from_numpy(pred), "label": torch.from_numpy(implant)}]
        writer.collect(engine)
    writer.write(engine)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["name"] for r in m["cases"]] == ["a/defect0", "a/defect1", "b/defect0"]
    assert [round(r["dice"], 4) for r in m["cases"]] == [1.0, round(2 / 3, 4), 0.0]
    assert m["groups"]["a"]["dice"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["groups"]["b"]["dice"] == 0.0 and m["mean"]["dice"] == pytest.approx((1 + 2 / 3) / 3)
    assert m["cases"][1]["hd95"] == pytest.approx(2.0)  # the missing half is 2 voxels deep along x (1 mm each)
    assert engine.state.metrics["implant_dice"] == pytest.approx(m["mean"]["dice"])


def test_vault_region_is_the_upper_slab_with_margin():
    skull = np.zeros((4, 4, 40), bool)
    skull[:, :, 10:31] = True  # extent 10..30 along the last (superior) axis
    region = sc.vault_region(skull, vault_fraction=0.5, margin=3)
    # cut = 30 - 0.5 * 20 - 3 = 17: slices 17.. are in
    assert region[:, :, 17:].all() and not region[:, :, :17].any()
    occ = np.zeros_like(skull)
    occ[1:4, 1:4, 2:5] = True  # a low blob below the slab is dropped with the prior, kept without it
    assert sc.postprocess_implant(occ, np.zeros_like(skull)).sum() > 0
    assert not sc.postprocess_implant(occ, np.zeros_like(skull), vault_fraction=0.5).any()


def test_superres_input_is_the_nearest_upsampled_max_pool():
    mask = np.zeros((5, 4, 4), bool)
    mask[0, 1, 2] = True
    mask[4, 3, 3] = True  # in the last, partial cell along axis 0
    up = sc.superres_input(mask, 2)
    expected = np.zeros_like(mask)
    expected[0:2, 0:2, 2:4] = True
    expected[4:5, 2:4, 2:4] = True
    assert up.shape == mask.shape and np.array_equal(up, expected)
    assert (up | mask).sum() == up.sum()  # the coarse grid covers the fine mask


def test_superres_pair_is_the_coarse_shell_and_the_fine_mask_alone():
    """The super-resolution target is the fine mask only: the previous loop also put the coarse input's shell into
    the target (the completion task's target), which taught the network to keep the coarse boundary."""
    from monai_fovea.apps.skull_training import SuperResInputd
    from monai_fovea.transforms import EdgeShell

    fine = skull_shell((24, 24, 20), seed=3, thickness=(2, 3)).astype(bool)
    d = SuperResInputd("complete", factor=2)({"complete": fine[None].astype(np.uint8)})
    assert np.array_equal(d["label"][0].numpy() > 0, fine)
    coarse = sc.superres_input(fine, 2)
    expected = EdgeShell()(torch.from_numpy(coarse[None].astype(np.float32)))
    assert torch.equal(d["image"], expected.float())
    shell = d["image"][0].numpy() > 0
    assert (shell & ~fine).any()  # the input has voxels outside the fine mask (the coarse boundary) ...
    assert not (d["label"][0].numpy()[shell & ~fine]).any()  # ... which the target leaves empty


def test_superres_training_and_refinement_run_on_the_fine_grid(tmp_path):
    out = tmp_path / "sr.pt"
    result = sc.train_superres(out, steps=3, channels=(2, 4, 4), crop_size=(24, 24, 24), skull_seeds=(1,))
    assert len(result["losses"]) == 3 and all(np.isfinite(result["losses"]))
    net = sc.build_network((2, 4, 4))
    net.load_state_dict(torch.load(out, weights_only=True))
    fine = skull_shell((32, 32, 24), seed=2).astype(bool)
    occ = sc.superres(net, sc.superres_input(fine, 2))
    assert occ.shape == fine.shape and occ.dtype == bool


def test_mri_skull_is_resampled_to_the_ct_spacing_with_its_volume_kept():
    import nibabel as nib

    from monai_fovea.data.skull_extraction import load_mri_skull

    skull_1mm, affine_1mm = load_mri_skull()  # what load_mri_skull_at_ct_spacing() resamples
    skull, affine = sc.resample_mask(skull_1mm, affine_1mm, sc.CT_SPACING)
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), sc.CT_SPACING)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    # nearest-neighbour resampling keeps the bone volume (mm^3) within 2 %, and the skull in the same place (mm)
    vol_1mm = skull_1mm.sum() * abs(np.linalg.det(affine_1mm[:3, :3]))
    vol = skull.sum() * abs(np.linalg.det(affine[:3, :3]))
    assert abs(vol / vol_1mm - 1) < 0.02

    def centroid_mm(mask, aff):
        return (aff @ np.append(np.argwhere(mask).mean(0), 1.0))[:3]

    assert np.allclose(centroid_mm(skull, affine), centroid_mm(skull_1mm, affine_1mm), atol=1.0)
