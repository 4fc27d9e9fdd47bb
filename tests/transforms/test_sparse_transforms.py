"""Sparse transforms: dense<->sparse round trip, hand-made coordinates, edge shells, synthetic skull defects."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from monai_fovea.data.sparse_volume import SparseVolume, collate_sparse
from monai_fovea.transforms import (
    EdgeShell,
    EdgeShelld,
    RandSkullDefectd,
    SparseToDense,
    SparseToDensed,
    ToSparse,
    ToSparsed,
)

AFFINE = torch.tensor([[0.957, 0, 0, -10.0], [0, 0.957, 0, 5.0], [0, 0, 1.5, 2.0], [0, 0, 0, 1]], dtype=torch.float64)


def _hand_made():
    img = torch.zeros(2, 3, 4, 5)
    img[0, 1, 2, 3] = 7.0
    img[1, 1, 2, 3] = -2.0
    img[1, 2, 0, 4] = 3.5  # active through channel 1 only
    return img


def test_to_sparse_coordinates_and_features_of_hand_made_volume():
    img = MetaTensor(_hand_made(), affine=AFFINE)
    vol = ToSparse(features="intensity")(img)
    assert vol.coords.dtype == torch.int32
    assert vol.coords.tolist() == [[0, 1, 2, 3], [0, 2, 0, 4]]  # row-major order, batch index 0
    assert vol.features.tolist() == [[7.0, -2.0], [0.0, 3.5]]
    assert vol.spatial_shape == (3, 4, 5)
    assert torch.equal(vol.affine, AFFINE)
    ones = ToSparse(threshold=5.0)(img)  # only the voxel with 7 > 5
    assert ones.coords.tolist() == [[0, 1, 2, 3]] and ones.features.tolist() == [[1.0]]


def test_round_trip_is_exact_and_keeps_affine():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 6, 7, 8, generator=g)
    img[img < 0.7] = 0
    dense = SparseToDense()(ToSparse(features="intensity")(MetaTensor(img, affine=AFFINE)))
    assert isinstance(dense, MetaTensor)
    assert torch.equal(dense.as_tensor(), img)
    assert torch.equal(dense.affine.to(torch.float64), AFFINE)


def test_dictionary_round_trip_and_collate_batches_indices():
    img = (_hand_made() > 0).float()
    d = ToSparsed(["a", "b"])({"a": img, "b": img[:, :2]})
    batch = collate_sparse([d["a"], d["b"], d["a"]])
    assert batch.batch_size == 3 and batch.spatial_shape == (3, 4, 5)
    # "a" has the voxels (1,2,3) and (2,0,4); "b" (first two rows) only (1,2,3)
    assert batch.coords.tolist() == [[0, 1, 2, 3], [0, 2, 0, 4], [1, 1, 2, 3], [2, 1, 2, 3], [2, 2, 0, 4]]
    dense = batch.to_dense()
    assert dense.shape == (3, 1, 3, 4, 5)
    assert dense.sum().item() == 5 and dense[1, 0, 1, 2, 3] == 1 and dense[1, 0, 2, 0, 4] == 0
    st = batch.to_spconv()
    assert torch.equal(st.dense(), dense)
    back = SparseToDensed("a")(d)["a"]
    assert torch.equal(back.as_tensor(), img.amax(0, keepdim=True))  # "ones" features -> one channel, any active


def test_collate_dict_batch():
    vol = SparseVolume(torch.tensor([[0, 1, 1]], dtype=torch.int32), torch.ones(1, 1), (3, 3))
    out = collate_sparse([{"x": vol, "y": torch.tensor(1.0)}, {"x": vol, "y": torch.tensor(2.0)}])
    assert out["x"].coords.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out["y"].tolist() == [1.0, 2.0]


def test_to_sparse_rejects_bad_features_argument():
    with pytest.raises(ValueError, match="features"):
        ToSparse(features="values")


@pytest.mark.parametrize("as_sparse", [False, True])
def test_edge_shell_of_a_cube_matches_hand_count(as_sparse):
    mask = torch.zeros(1, 9, 9, 9)
    mask[0, 2:7, 2:7, 2:7] = 1  # 5^3 = 125 voxels
    cases = {(1, 1): 125 - 27, (2, 1): 125 - 1, (1, 3): 125 - 27}  # (thickness, connectivity) -> shell size
    for (thickness, conn), count in cases.items():
        shell = EdgeShell(thickness, conn)
        if as_sparse:
            out = shell(ToSparse()(mask))
            assert out.num_active == count
            assert out.to_dense()[0, 0, 4, 4, 4] == 0 and out.to_dense()[0, 0, 2, 4, 4] == 1
        else:
            out = shell(mask)
            assert out.sum().item() == count and out[0, 4, 4, 4] == 0 and out[0, 2, 4, 4] == 1


def test_edge_shell_on_numpy_returns_numpy_of_the_same_dtype():
    mask = np.zeros((1, 7, 7, 7), dtype=np.float32)
    mask[0, 1:6, 1:6, 1:6] = 1
    out = EdgeShell()(mask)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.sum() == 98


def test_edge_shell_equals_scipy_xor_erosion_on_a_random_blob_and_keeps_meta():
    rng = np.random.default_rng(1)
    blob = ndimage.binary_dilation(rng.random((12, 11, 10)) > 0.9, iterations=2)
    blob[0] = True  # touching the border: outside counts as background, as in scipy
    expected = blob ^ ndimage.binary_erosion(blob)
    img = MetaTensor(torch.from_numpy(blob[None].astype(np.uint8)), affine=AFFINE)
    out = EdgeShelld("m")({"m": img})["m"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.uint8
    assert np.array_equal(out[0].numpy().astype(bool), expected)
    assert torch.equal(out.affine.to(torch.float64), AFFINE)
    sparse = EdgeShell()(ToSparse()(img))
    assert np.array_equal(sparse.to_dense()[0, 0].numpy().astype(bool), expected)


def _ball_shell(size=40):
    g = np.indices((size,) * 3) - (size - 1) / 2
    r = np.sqrt((g**2).sum(0))
    return ((r > size * 0.3) & (r <= size * 0.4)).astype(np.uint8)[None]


@pytest.mark.parametrize("shape", ["cube", "sphere", "irregular"])
def test_skull_defect_union_is_skull_and_parts_are_disjoint(shape):
    skull = MetaTensor(torch.from_numpy(_ball_shell()), affine=AFFINE)
    t = RandSkullDefectd("skull", radius_range=(4, 6), shapes=[shape]).set_random_state(seed=3)
    d = t({"skull": skull})
    defective, implant = d["defective"].bool(), d["implant"].bool()
    assert implant.sum() > 0 and defective.sum() > 0
    assert not (defective & implant).any()
    assert torch.equal(defective | implant, skull.bool())
    assert torch.equal(d["implant"].affine.to(torch.float64), AFFINE)
    # the defect sits on the upper half of the vault (last axis is superior)
    z = torch.nonzero(implant[0])[:, -1].float()
    assert z.mean() > 19.5 - 6
    # seeded: the same seed gives the same defect, another seed another
    again = RandSkullDefectd("skull", radius_range=(4, 6), shapes=[shape]).set_random_state(seed=3)({"skull": skull})
    assert torch.equal(again["implant"], d["implant"])
    other = RandSkullDefectd("skull", radius_range=(4, 6), shapes=[shape]).set_random_state(seed=4)({"skull": skull})
    assert not torch.equal(other["implant"], d["implant"])


def test_skull_defect_cube_size_is_exact_on_a_solid_block():
    block = np.ones((1, 21, 21, 21), dtype=np.uint8)
    d = RandSkullDefectd("s", radius_range=(3, 3), shapes=["cube"], vault_fraction=0.0).set_random_state(seed=0)(
        {"s": block})
    # centre on the top face (vault_fraction 0 -> the highest layer): a 7x7 cube cut in half by the border
    assert d["implant"].sum() == 7 * 7 * 4
    assert d["defective"].sum() == 21**3 - 7 * 7 * 4


def test_rand_skull_defect_rejects_multichannel_input():
    with pytest.raises(ValueError, match="single-channel"):
        RandSkullDefectd("s", radius_range=(1, 2))({"s": np.ones((2, 4, 4, 4))})
