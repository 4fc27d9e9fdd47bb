"""SparseInferer: one pass under the budget; tiles merged exactly (same voxels, same values) when forced to tile."""

import pytest
import torch
from monai.data import MetaTensor

pytest.importorskip("spconv.pytorch", reason="needs the 'spconv' package (pip install spconv)")

from monai_fovea.data.sparse_volume import SparseVolume  # noqa: E402
from monai_fovea.inferers import SparseInferer  # noqa: E402
from monai_fovea.networks import SparseAsDense, SparseCompletionNet, SparseUNet  # noqa: E402


def _shell(size=24):
    g = torch.stack(torch.meshgrid(*[torch.arange(size)] * 3, indexing="ij")).float() - (size - 1) / 2
    r = g.square().sum(0).sqrt()
    return ((r > size * 0.3) & (r <= size * 0.45)).float()[None, None]


def _bounded_unet():
    # receptive-field radius: stem 1 + (stride-2 cell 2 + conv 2) + decoder 1 = 6 voxels < overlap 8
    torch.manual_seed(0)
    net = SparseUNet(3, 1, 2, channels=(4, 6), strides=(2,), num_convs=1).eval()
    for m in net.modules():  # non-trivial BN statistics so that the normalisation matters
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def test_tiled_equals_one_pass_for_a_bounded_receptive_field():
    x = _shell() * torch.linspace(0.5, 2.0, 24)  # non-constant features
    wrapped = SparseAsDense(_bounded_unet(), background=-5.0)
    one = SparseInferer()
    tiled = SparseInferer(memory_budget_voxels=int((x > 0).sum()) // 3, roi_size=8, overlap=8)
    with torch.no_grad():
        ref = one(x, wrapped)
        out = tiled(x, wrapped)
    assert one.last_num_tiles == 1 and tiled.last_num_tiles > 8
    assert out.shape == (1, 2, 24, 24, 24)
    assert torch.equal(out == -5.0, ref == -5.0)  # same output voxels
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)
    assert torch.allclose(ref, wrapped(x), atol=1e-6)  # one pass == the dense wrapper itself


def test_auto_roi_fits_the_budget_and_matches_one_pass_on_sparse_input():
    x = _shell()
    vol = SparseVolume(torch.nonzero(x[:, 0]).int(), torch.ones(int(x.sum()), 1), (24, 24, 24))
    torch.manual_seed(0)
    net = SparseUNet(3, 1, 2, channels=(4,), strides=(), num_convs=2).eval()  # receptive-field radius 2
    budget = vol.num_active // 2
    inferer = SparseInferer(memory_budget_voxels=budget, overlap=2)
    with torch.no_grad():
        out = inferer(vol, net)
        ref = SparseInferer()(vol, net)
    assert isinstance(out, SparseVolume) and inferer.last_num_tiles >= 2
    assert max(inferer.last_tile_sizes) <= budget
    assert torch.allclose(out.to_dense(), ref.to_dense(), atol=1e-5)
    assert out.num_active == vol.num_active


def test_dense_metatensor_keeps_meta_and_generative_net_runs_in_one_pass():
    affine = torch.diag(torch.tensor([0.957, 0.957, 1.5, 1.0], dtype=torch.float64))
    x = MetaTensor(_shell(16), affine=affine)
    net = SparseCompletionNet(3, channels=(2, 2, 4)).eval()
    with torch.no_grad():
        out = SparseInferer(memory_budget_bytes=10**9)(x, SparseAsDense(net, background=-20.0))
    assert isinstance(out, MetaTensor) and out.shape == (1, 1, 16, 16, 16)
    assert torch.equal(out.affine.to(torch.float64), affine)


def test_bad_budget_is_named():
    with pytest.raises(ValueError, match="memory_budget_voxels"):
        SparseInferer(memory_budget_voxels=0)


@pytest.mark.parametrize("wrap", [True, False])
def test_an_all_empty_input_is_a_value_error(wrap):
    net = _bounded_unet()
    network = SparseAsDense(net, threshold=0.1, background=-5.0) if wrap else net
    x = torch.zeros(1, 1, 12, 12, 12)
    x[0, 0, 3, 3, 3] = 0.05  # below SparseAsDense's threshold
    with pytest.raises(ValueError, match=r"no active voxels: the input mask is empty .*12x12x12"):
        SparseInferer(threshold=0.1)(x, network)
    with pytest.raises(ValueError, match="SparseVolume has no coordinates"):
        SparseInferer()(SparseVolume(torch.zeros(0, 4, dtype=torch.int32), torch.zeros(0, 1), (12, 12, 12)), net)


def test_an_empty_volume_next_to_a_full_one_gets_the_background():
    x = torch.cat([_shell(16), torch.zeros(1, 1, 16, 16, 16)])
    with torch.no_grad():
        out = SparseInferer()(x, SparseAsDense(_bounded_unet(), background=-5.0))
    assert out.shape == (2, 2, 16, 16, 16)
    assert bool((out[1] == -5.0).all())
    assert bool((out[0][:, _shell(16)[0, 0] > 0] != -5.0).any())
