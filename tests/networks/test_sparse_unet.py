"""SparseUNet: output on exactly the input's active set, gradients everywhere, training lowers the loss, and the
dense wrapper gives the sparse path's values."""

import pytest
import torch

pytest.importorskip("spconv.pytorch", reason="needs the 'spconv' package (pip install spconv)")

from monai_fovea.networks import SparseAsDense, SparseUNet  # noqa: E402
from monai_fovea.networks.sparse_blocks import dense_to_spconv  # noqa: E402


def _volume(shape=(2, 1, 13, 11, 9), p=0.8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) > p).float()


def test_output_keeps_the_active_set_and_shapes():
    torch.manual_seed(0)
    x = dense_to_spconv(_volume())  # odd sizes: the network pads its grid to the total stride internally
    net = SparseUNet(3, 1, 3, channels=(4, 8, 8), strides=(2, 2))
    out = net(x)
    assert torch.equal(out.indices, x.indices)
    assert out.features.shape == (x.features.shape[0], 3)
    assert list(out.spatial_shape) == [13, 11, 9]


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = SparseUNet(3, 1, 2, channels=(4, 8, 8), strides=(2, 2))
    out = net(dense_to_spconv(_volume()))
    out.features.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    x = dense_to_spconv(_volume((1, 1, 12, 12, 12), 0.7))
    target = (x.indices[:, 1] >= 6).float()  # upper half vs lower half of the active voxels
    net = SparseUNet(3, 1, 1, channels=(4, 8), strides=(2,))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).features[:, 0], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_dense_wrapper_equals_sparse_path_and_fills_background():
    torch.manual_seed(0)
    dense = _volume() * 2.5
    net = SparseUNet(3, 1, 2, channels=(4, 8, 8), strides=(2, 2)).eval()
    wrapped = SparseAsDense(net, background=-7.0).eval()
    with torch.no_grad():
        out = wrapped(dense)
        sparse = net(dense_to_spconv(dense))
    assert out.shape == (2, 2, 13, 11, 9)
    idx = sparse.indices.long()
    assert torch.allclose(out[idx[:, 0], :, idx[:, 1], idx[:, 2], idx[:, 3]], sparse.features)
    inactive = (dense == 0).expand_as(out)
    assert (out[inactive] == -7.0).all()
    assert (wrapped(torch.zeros(1, 1, 4, 4, 4)) == -7.0).all()


def test_2d_network_runs_on_the_active_set():
    net = SparseUNet(2, 2, 1, channels=(4, 4), strides=(2,))
    x = dense_to_spconv(_volume((1, 2, 10, 10), 0.6))
    assert net(x).features.shape == (x.features.shape[0], 1)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="channels"):
        SparseUNet(3, 1, 1, channels=(4, 8), strides=(2, 2))
    with pytest.raises(ValueError, match="spatial_dims"):
        SparseUNet(4, 1, 1)


def test_convs_use_the_native_algorithm_for_cpu_inputs_whatever_was_chosen_at_construction():
    # spconv's CUDA builds construct convs with implicit GEMM, which has no CPU kernels; the pre-forward hook must
    # switch every conv (including the 1x1 head) to the native algorithm for a CPU input, or .cpu() inference fails
    from spconv.core import ConvAlgo

    torch.manual_seed(0)
    x = dense_to_spconv(_volume())
    net = SparseUNet(3, 1, 2, channels=(4, 8, 8), strides=(2, 2)).eval()
    expected = net(x).features
    convs = [m for m in net.modules() if hasattr(m, "algo")]
    assert len(convs) == 2 * 1 + 2 * (1 + 1 + 2 + 2) + 1  # stem, (down, up, enc x2, dec x2) per level, head
    for conv in convs:  # what a CUDA build would have chosen
        conv.algo = ConvAlgo.MaskImplicitGemm
        conv._gpu_algo = ConvAlgo.MaskImplicitGemm
    out = net(x).features
    assert torch.equal(out, expected)
    assert all(conv.algo == ConvAlgo.Native for conv in convs)


def test_compacted_strided_conv_coordinates_change_no_value():
    """The strided convs' coordinates are copied out of spconv's worst-case buffer (``compact_out_indices``): the
    kept coordinates are exactly the rows spconv produced, the paired inverse conv still finds them, and outputs and
    gradients equal those of the network without the copy (one thread: spconv's CPU sums are order-dependent)."""
    from monai_fovea.networks._spconv import deterministic_threads

    x = dense_to_spconv(_volume((1, 1, 16, 16, 16), 0.7))
    results = []
    for compact in (True, False):
        torch.manual_seed(0)
        net = SparseUNet(3, 1, 2, channels=(4, 8, 8), strides=(2, 2))
        if not compact:
            for m in net.modules():
                m._forward_hooks.clear()
        with deterministic_threads("cpu"):
            out = net(x)
            out.features.square().mean().backward()
        down0 = out.indice_dict["down0"]
        results.append((out.features.detach(), down0.out_indices, [p.grad for p in net.parameters()]))
        if compact:  # the kept coordinates own their storage: no rows beyond the used ones
            assert down0.out_indices.untyped_storage().nbytes() == down0.out_indices.nelement() * 4
    (f1, i1, g1), (f2, i2, g2) = results
    assert torch.equal(i1, i2) and len(i1) > 0
    assert torch.equal(f1, f2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
