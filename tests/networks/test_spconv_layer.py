"""The spconv compatibility layer: clear import, CPU fix, and a real training step on CPU."""

import pytest
import torch

from monai_fovea.networks import _spconv

spconv = pytest.importorskip("spconv.pytorch", reason="needs the 'spconv' package (pip install spconv)")


def _stack(spconv_torch):
    return spconv_torch.SparseSequential(
        spconv_torch.SubMConv3d(1, 4, 3, indice_key="subm0", bias=False),
        torch.nn.ReLU(),
        spconv_torch.SparseConv3d(4, 8, 2, stride=2, indice_key="down0", bias=False),
        torch.nn.ReLU(),
        spconv_torch.SparseInverseConv3d(8, 1, 2, indice_key="down0", bias=False),
    )


def _batch(spconv_torch):
    g = torch.Generator().manual_seed(0)
    coords = torch.unique(torch.randint(0, 8, (60, 3), generator=g), dim=0).int()
    indices = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], 1)
    feats = torch.rand(len(coords), 1, generator=g)
    target = (coords.sum(1, keepdim=True) % 2).float()
    return spconv_torch.SparseConvTensor(feats, indices, [8, 8, 8], batch_size=1), target


def test_require_spconv_returns_module_and_applies_fix_only_without_cuda():
    mod = _spconv.require_spconv()
    assert mod.__name__ == "spconv.pytorch"
    assert _spconv.cpu_fix_applied() == (not torch.cuda.is_available())
    if not torch.cuda.is_available():
        assert mod.ops.get_current_stream() == 0
        assert mod.cppcore.get_current_stream() == 0


def test_install_hint_names_cpu_package_without_cuda():
    if torch.cuda.is_available():
        assert "spconv-cu" in _spconv.install_hint()
    else:
        assert _spconv.install_hint().startswith("pip install spconv ")


def test_one_sgd_step_lowers_the_loss_on_cpu():
    spconv_torch = _spconv.require_spconv()
    torch.manual_seed(0)
    net = _stack(spconv_torch)
    x, target = _batch(spconv_torch)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def loss_now():
        out = net(x)
        # the inverse conv restores exactly the input's active set, in the same order
        assert torch.equal(out.indices, x.indices)
        return loss_fn(out.features, target)

    before = loss_now()
    opt.zero_grad()
    before.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads), "every layer must receive a gradient"
    opt.step()
    with torch.no_grad():
        after = loss_now()
    assert after.item() < before.item()
