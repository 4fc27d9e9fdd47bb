"""Sparse networks refuse what they cannot run on with a message saying what to pass, instead of spconv's
"'Tensor' object has no attribute 'spatial_shape'" or its internal "tensor must not empty" assert; the dense wrapper
answers an all-empty input with its background."""

import pytest
import torch

from monai_fovea.data.sparse_volume import SparseVolume
from monai_fovea.networks import SparseAsDense, SparseCompletionNet, SparseUNet
from monai_fovea.networks.sparse_blocks import dense_to_spconv
from monai_fovea.transforms import ToSparse


def _nets():
    torch.manual_seed(0)
    return [SparseUNet(3, 1, 2, channels=(4, 8), strides=(2,)).eval(), SparseCompletionNet(3, channels=(2, 4)).eval()]


@pytest.mark.parametrize("net", _nets(), ids=["SparseUNet", "SparseCompletionNet"])
def test_dense_tensor_is_a_type_error_that_names_the_fix(net):
    dense = torch.zeros(1, 1, 8, 8, 8)
    dense[0, 0, 2:5, 2:5, 2:5] = 1
    name = type(net).__name__
    with pytest.raises(TypeError, match=rf"{name} takes a spconv SparseConvTensor.*SparseAsDense.*ToSparse"):
        net(dense)
    vol = ToSparse()(dense[0])
    with pytest.raises(TypeError, match=r"SparseVolume: pass volume\.to_spconv\(\)"):
        net(vol)
    with pytest.raises(TypeError, match="got ndarray"):
        net(dense.numpy())
    # what the messages say to do works: the same voxels through .to_spconv() and through SparseAsDense
    with torch.no_grad():
        out = net(vol.to_spconv())
        wrapped = SparseAsDense(net, background=-9.0)(dense)
    assert out.features.shape[1] == net.out_channels and out.features.shape[0] > 0
    assert wrapped.shape == (1, net.out_channels, 8, 8, 8)


@pytest.mark.parametrize("net", _nets(), ids=["SparseUNet", "SparseCompletionNet"])
def test_no_active_voxel_is_a_clear_value_error(net):
    empty = dense_to_spconv(torch.zeros(2, 1, 8, 8, 8))
    assert empty.features.shape[0] == 0
    with pytest.raises(ValueError, match=r"no active voxels: the input mask is empty \(0 of 8x8x8 voxels active\)"):
        net(empty)
    if isinstance(net, SparseCompletionNet):  # the training loss refuses it the same way
        with pytest.raises(ValueError, match="no active voxels"):
            net.train().loss(empty, torch.zeros(0, 4, dtype=torch.int32))


def test_sparse_as_dense_returns_background_on_an_all_empty_input_and_refuses_sparse_input():
    net = _nets()[0]
    wrapped = SparseAsDense(net, threshold=0.5, background=-20.0).eval()
    x = torch.full((2, 1, 6, 7, 5), 0.5)  # nothing is > threshold
    with torch.no_grad():
        out = wrapped(x)
    assert out.shape == (2, 2, 6, 7, 5)
    assert bool((out == -20.0).all())
    with pytest.raises(TypeError, match="SparseAsDense takes a dense"):
        wrapped(dense_to_spconv((torch.rand(1, 1, 6, 6, 6) > 0.5).float()))
    with pytest.raises(TypeError, match="SparseAsDense takes a dense"):
        wrapped(SparseVolume(torch.zeros(1, 4, dtype=torch.int32), torch.ones(1, 1), (4, 4, 4)))
