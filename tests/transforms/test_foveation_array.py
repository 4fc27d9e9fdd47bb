"""Array and dictionary foveation transforms: types, MetaTensor metadata and affines, centre grids, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialCrop

from monai_fovea.transforms import (
    FoveationCenters,
    FoveationCentersd,
    MultiScalePatches,
    MultiScalePatchesd,
    MultiScalePatchesD,
    RandFoveationCenters,
    RandFoveationCentersd,
    RandFoveationCentersDict,
)


def test_multiscale_patches_types_and_monai_crop_equivalence():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((2, 30, 40)).astype(np.float32)
    t = MultiScalePatches([10, 20], 10)
    out_np = t(img, [[15, 20]])
    assert isinstance(out_np, np.ndarray) and out_np.shape == (1, 2, 2, 10, 10)
    crop = SpatialCrop(roi_center=(15, 20), roi_size=(10, 10))(torch.as_tensor(img))
    assert np.array_equal(out_np[0, 0], np.asarray(crop))
    out_t = t(torch.as_tensor(img), torch.tensor([[15, 20]]))
    assert type(out_t) is torch.Tensor and torch.equal(out_t, torch.as_tensor(out_np))


def test_metatensor_meta_kept_and_patch_affines():
    affine = torch.tensor([[0.5, 0, 0, 10.0], [0, 2.0, 0, -4.0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    img = MetaTensor(torch.rand(1, 32, 32), affine=affine, meta={"filename_or_obj": "x.nii.gz"})
    out = MultiScalePatches([8, 16], 8)(img, torch.tensor([[12, 20]]))
    assert isinstance(out, MetaTensor)
    assert out.meta["filename_or_obj"] == "x.nii.gz"
    torch.testing.assert_close(out.affine.to(torch.float64), affine)
    aff = out.meta["foveation_affines"]
    assert aff.shape == (1, 2, 4, 4)  # MONAI keeps a 4x4 affine for 2D images
    # scale 0 (unit step): patch voxel (0, 0) is image voxel (12 - 4, 20 - 4) = (8, 16)
    world = affine[:2, :2] @ torch.tensor([8.0, 16.0], dtype=torch.float64) + affine[:2, 3]
    torch.testing.assert_close(aff[0, 0, :2, 3], world)
    torch.testing.assert_close(torch.diagonal(aff[0, 0, :2, :2]), torch.tensor([0.5, 2.0], dtype=torch.float64))
    # scale 1 (step 2): voxel j covers image pixels [4 + 2j, 6 + 2j) -> centre 4.5 + 2j; spacing doubles
    world1 = affine[:2, :2] @ torch.tensor([4.5, 12.5], dtype=torch.float64) + affine[:2, 3]
    torch.testing.assert_close(aff[0, 1, :2, 3], world1)
    torch.testing.assert_close(torch.diagonal(aff[0, 1, :2, :2]), torch.tensor([1.0, 4.0], dtype=torch.float64))


def test_foveation_centers_grid():
    centers, grid = FoveationCenters(stride=(8, 10))(torch.zeros(1, 20, 30))
    assert grid == (3, 3)
    assert centers.dtype == torch.int64
    assert centers.tolist() == [[4, 5], [4, 15], [4, 25], [12, 5], [12, 15], [12, 25], [20, 5], [20, 15], [20, 25]]
    centers3, grid3 = FoveationCenters(stride=4)((8, 8, 5))
    assert grid3 == (2, 2, 2) and centers3.shape == (8, 3)


def test_rand_centers_seeded_subset_of_grid():
    grid, _ = FoveationCenters(stride=8)(torch.zeros(1, 64, 64))
    grid_set = {tuple(c) for c in grid.tolist()}
    a = RandFoveationCenters(stride=8, num_centers=16).set_random_state(seed=3)(torch.zeros(1, 64, 64))
    b = RandFoveationCenters(stride=8, num_centers=16).set_random_state(seed=3)(torch.zeros(1, 64, 64))
    assert torch.equal(a, b)
    rows = [tuple(c) for c in a.tolist()]
    assert len(set(rows)) == 16 and set(rows) <= grid_set  # without replacement, on the grid


def test_rand_centers_balanced_samples_rare_class():
    label = torch.zeros(1, 64, 64, dtype=torch.int64)
    label[0, 0:8, 0:8] = 2  # one grid cell of 64 holds class 2
    label[0, 60:, :] = 255  # ignored
    plain = RandFoveationCenters(stride=8, num_centers=16).set_random_state(seed=0)
    balanced = RandFoveationCenters(stride=8, num_centers=16, balanced=True, ignore_index=255).set_random_state(seed=0)
    n_plain = n_bal = 0
    for _ in range(10):
        n_plain += int((plain(label, label) == torch.tensor([4, 4])).all(1).sum())
        c = balanced(label, label)
        n_bal += int((c == torch.tensor([4, 4])).all(1).sum())
        assert not bool((c[:, 0] == 60).any())  # the ignored row of cells is never drawn as its own class
    # uniform: expected 160/64 = 2.5 draws of the rare cell; balanced: 160/2 = 80 (two classes present)
    assert n_bal > 50 and n_plain < 10


def test_dictionary_wrappers():
    data = {"image": torch.rand(1, 32, 32), "label": torch.randint(0, 3, (1, 32, 32))}
    rc = RandFoveationCentersDict("image", stride=8, num_centers=5, label_key="label", balanced=True)
    rc.set_random_state(seed=1)
    d = rc(data)
    again = RandFoveationCentersd("image", stride=8, num_centers=5, label_key="label", balanced=True)
    assert torch.equal(d["centers"], again.set_random_state(seed=1)(data)["centers"])
    assert MultiScalePatchesD is MultiScalePatchesd
    out = MultiScalePatchesd(("image", "label"), "centers", [8, 16], 8, mode=("bilinear", "nearest"),
                             antialias=(True, False), padding_mode=("border", "constant"), value=(0, 255))(d)
    assert out["image"].shape == (5, 2, 1, 8, 8) and out["label"].shape == (5, 2, 1, 8, 8)
    c = d["centers"][0].tolist()
    assert torch.equal(out["label"][0, 0, 0], data["label"][0, c[0] - 4 : c[0] + 4, c[1] - 4 : c[1] + 4])
    g = FoveationCentersd("image", stride=16)(data)
    assert g["centers_grid"] == (2, 2) and g["centers"].tolist() == [[8, 8], [8, 24], [24, 8], [24, 24]]
    with pytest.raises(KeyError, match="centers"):
        MultiScalePatchesd("image", "centers", [8], 8)({"image": torch.rand(1, 8, 8)})
    with pytest.raises(ValueError, match="label_key"):
        RandFoveationCentersd("image", stride=8, balanced=True)
