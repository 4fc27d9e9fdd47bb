"""SparseCompletionNet: generates voxels absent from the input, multi-level labels, gradients, training, wrapper."""

import pytest
import torch

pytest.importorskip("spconv.pytorch", reason="needs the 'spconv' package (pip install spconv)")

from monai_fovea.networks import SparseAsDense, SparseCompletionNet  # noqa: E402
from monai_fovea.networks.sparse_blocks import dense_to_spconv  # noqa: E402


def _plate_with_hole():
    """A 10x10 plate with a 4x4 hole; the target is the full plate."""
    full = torch.zeros(1, 1, 16, 16, 16)
    full[0, 0, 3:13, 3:13, 7] = 1
    holed = full.clone()
    holed[0, 0, 6:10, 6:10, 7] = 0
    return holed, torch.nonzero(full[:, 0]).int()


def test_occupancy_labels_at_each_stride_are_hand_computed():
    target = torch.tensor([[0, 5, 2, 0], [0, 4, 3, 1]], dtype=torch.int32)
    cells = torch.tensor([[0, 2, 1, 0], [0, 2, 0, 0], [0, 1, 0, 0], [1, 2, 1, 0]], dtype=torch.int32)
    # stride 2: both targets fall into cell (2, 1, 0); other cells and the other batch item are empty
    labels = SparseCompletionNet.occupancy_labels(cells, target, 2, (4, 4, 4))
    assert labels.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_training_generates_the_missing_voxels_and_lowers_the_loss():
    torch.manual_seed(0)
    holed, target = _plate_with_hole()
    x = dense_to_spconv(holed)
    net = SparseCompletionNet(3, channels=(4, 8, 8))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for step in range(40):
        loss, per_level = net.loss(x, target)
        assert len(per_level) == 2
        opt.zero_grad()
        loss.backward()
        if step == 0:
            missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
            assert missing == [], "gradients must reach encoder, generative decoder and every classifier"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    net.eval()
    with torch.no_grad():
        out = net(x)
    occupied = {tuple(c) for c in out.indices[out.features[:, 0] > 0].tolist()}
    hole = {(0, i, j, 7) for i in range(6, 10) for j in range(6, 10)}
    plate = {tuple(c) for c in target.tolist()}
    input_voxels = {tuple(c) for c in x.indices.tolist()}
    assert hole.isdisjoint(input_voxels)
    # the network outputs voxels that were absent from its input: most of the hole, little outside the plate
    assert len(occupied & hole) >= 12
    assert len(occupied - plate) <= 8


def test_untrained_eval_output_shape_and_dense_wrapper_match():
    torch.manual_seed(1)
    holed, _ = _plate_with_hole()
    net = SparseCompletionNet(3, channels=(2, 2, 4)).eval()
    for m in net.classify:  # bias the classifiers so that nothing is pruned and every child is generated
        torch.nn.init.zeros_(m.weight)
        torch.nn.init.constant_(m.bias, 1.0)
    with torch.no_grad():
        out = net(dense_to_spconv(holed))
        dense = SparseAsDense(net, background=-20.0)(holed)
    assert list(out.spatial_shape) == [16, 16, 16] and out.features.shape[1] == 1
    # with nothing pruned, the finest level holds every child of the coarse cells (and the input voxels)
    assert out.features.shape[0] > holed.sum()
    idx = out.indices.long()
    assert dense.shape == (1, 1, 16, 16, 16)
    assert torch.equal(dense[idx[:, 0], 0, idx[:, 1], idx[:, 2], idx[:, 3]], out.features[:, 0])
    assert (dense > -20).sum() == out.features.shape[0]


def test_everything_pruned_gives_an_empty_output():
    holed, _ = _plate_with_hole()
    net = SparseCompletionNet(3, channels=(2, 2, 4)).eval()
    for m in net.classify:
        torch.nn.init.zeros_(m.weight)
        torch.nn.init.constant_(m.bias, -1.0)
    with torch.no_grad():
        assert net(dense_to_spconv(holed)).features.shape == (0, 1)
        assert (SparseAsDense(net, background=-20.0)(holed) == -20).all()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="first_kernel"):
        SparseCompletionNet(3, channels=(2, 4), first_kernel=3)
    with pytest.raises(ValueError, match="channels"):
        SparseCompletionNet(3, channels=(2,))
