"""The foveation recipe's options (issue 12): head learning rate, warm-up, temperature and prior schedules, the
authors' per-location backbone steps with one head step per image, and the entropy / prior terms of the loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from monai_fovea.apps.foveation import FoveatedLoss, FoveatedPrepareBatch, train_foveation
from monai_fovea.apps.foveation_schedule import FoveatedIteration, FoveationSchedule, head_param_groups
from monai_fovea.data.synthetic import fov_tradeoff
from monai_fovea.networks import FoveatedSegmenter

GEOM = dict(num_fine=4, num_context=2, fine_size=8, blob_radius=8, ring_gap=6, ring_width=3)


def _model(mode="soft"):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1))
    return FoveatedSegmenter(backbone, [16, 32, 64], 16, spatial_dims=2, in_channels=1, mode=mode, stride=8)


def _data(n=2):
    return [fov_tradeoff((64, 64), seed=s, **GEOM) for s in range(n)]


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return [not torch.equal(a, b) for a, b in zip(before, module.parameters())]


def test_head_param_groups_partition_the_parameters_and_scale_the_head_lr():
    net = _model()
    groups = head_param_groups(net, 1e-3, 10.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())  # each parameter once
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in net.head.parameters()}
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]


def test_zero_head_lr_trains_the_backbone_only():
    net = _model()
    head, backbone = _params(net.head), _params(net.backbone)
    train_foveation(net, _data(), num_classes=5, num_iterations=3, progress=False, overrides={"head_lr_scale": 0.0})
    assert not any(_changed(head, net.head)) and all(_changed(backbone, net.backbone))


def test_schedule_values():
    net = _model()
    s = FoveationSchedule(net, FoveatedLoss(), warmup_mode="average", warmup_iterations=3, tau_start=1.0,
                          tau_end=0.01, total_iterations=5, prior_weight=2.0, prior_iterations=4)
    v = [s.values(t) for t in range(5)]
    assert [x["mode"] for x in v] == ["average"] * 3 + ["soft"] * 2
    assert [x["tau"] for x in v] == pytest.approx([1.0, 10 ** -0.5, 0.1, 10 ** -1.5, 0.01])  # exponential
    assert [x["prior_weight"] for x in v] == pytest.approx([2.0, 1.5, 1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="warmup_mode"):
        FoveationSchedule(net, warmup_mode="nope")
    with pytest.raises(ValueError, match="prior_weight needs"):
        FoveationSchedule(net, None, prior_weight=1.0)


def test_warmup_leaves_the_head_untrained_and_ends_in_the_trained_mode():
    net = _model()
    head = _params(net.head)
    train_foveation(net, _data(), num_classes=5, num_iterations=4, progress=False,
                    overrides={"warmup_mode": "random", "warmup_iterations": 4})
    assert not any(_changed(head, net.head))  # the head is not used while the backbone warms up
    assert net.mode == "soft"
    net2 = _model()
    head2 = _params(net2.head)
    train_foveation(net2, _data(), num_classes=5, num_iterations=4, progress=False,
                    overrides={"warmup_mode": "random", "warmup_iterations": 2})
    assert all(_changed(head2, net2.head)) and net2.mode == "soft"  # 2 joint steps after the warm-up


def test_location_chunks_step_the_backbone_per_chunk_and_the_head_once_per_image(tmp_path):
    net = _model()
    train_foveation(net, _data(), num_classes=5, num_iterations=3, progress=False, output_dir=tmp_path,
                    overrides={"location_chunks": 4})
    opt = torch.load(tmp_path / "resume" / "resume.pt", weights_only=True)["optimizer"]
    head_ids = {id(p) for p in net.head.parameters()}
    steps = {}
    for i, p in enumerate(net.parameters()):  # Adam's state is keyed by the parameter's position
        steps.setdefault(id(p) in head_ids, set()).add(float(opt["state"][i]["step"]))
    assert steps == {False: {12.0}, True: {3.0}}  # 3 images x 4 chunks for the backbone, 3 for the head


def test_one_chunk_equals_the_trainers_own_step():
    a, b = _model(), _model()
    kw = dict(num_classes=5, num_iterations=3, progress=False, seed=1)
    train_foveation(a, _data(), **kw)
    train_foveation(b, _data(), **kw, overrides={"train#trainer#iteration_update": FoveatedIteration(1)})
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_summed_head_gradient_over_chunks():
    """The head's gradient applied once is the sum of the per-chunk gradients (checked against autograd on the
    concatenation of the chunk losses)."""
    net = _model()
    img = torch.as_tensor(_data(1)[0]["image"])[None]
    centers = torch.tensor([[8, 8], [24, 40], [40, 24], [56, 56]])
    lab = torch.as_tensor(_data(1)[0]["label"]).long()
    target = net.target_patches(lab, centers)
    loss_fn = FoveatedLoss()
    net.eval()  # batch norm on running statistics: the reference and the iteration see the same function
    ref = torch.autograd.grad(sum(loss_fn(net(img, centers[i : i + 2]), target[i : i + 2]) for i in (0, 2)),
                              list(net.head.parameters()))

    class _Engine:  # the attributes of MONAI's SupervisedTrainer that the iteration uses
        network, loss_function = net, loss_fn
        optimizer = torch.optim.SGD(head_param_groups(net, 0.0, 1.0), lr=0.0)
        non_blocking = False
        state = type("S", (), {"device": "cpu"})()

        @staticmethod
        def prepare_batch(batch, device, non_blocking):
            return img, target, (centers,), {}

        @staticmethod
        def inferer(x, network, c):
            return network(x, c)

    grads = []
    _Engine.optimizer.step = lambda: grads.append([None if p.grad is None else p.grad.clone()
                                                   for p in net.head.parameters()])
    net.train = lambda mode=True: net  # keep eval mode inside the iteration
    out = FoveatedIteration(2)(_Engine, {})
    assert all(g is None for g in grads[0]) and all(g is None for g in grads[1])  # chunk steps: no head gradient
    for g, r in zip(grads[2], ref):
        torch.testing.assert_close(g, r)
    assert out["pred"].shape == (4, 5, 16, 16)


def test_loss_terms_by_hand():
    f = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.2, 0.6]], requires_grad=True)
    logits, labels = torch.zeros(2, 5, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    h2 = -(0.4 * math.log(0.2) + 0.6 * math.log(0.6))
    base = math.log(5)
    assert float(FoveatedLoss(entropy_weight=-0.5)((logits, f), labels).detach()) == pytest.approx(base - 0.5 * (h + h2) / 2)
    prior = FoveatedLoss(prior_weight=2.0)
    assert float(prior((logits, f), (labels, torch.tensor([2, 2]))).detach()) == pytest.approx(
        base + 2.0 * (-math.log(0.1) - math.log(0.6)) / 2)
    assert float(prior((logits, f), (labels, torch.tensor([-1, -1]))).detach()) == pytest.approx(base)  # no preference
    # the baselines' weights carry no gradient: no term is added
    assert float(FoveatedLoss(entropy_weight=1.0)((logits, f.detach()), labels)) == pytest.approx(base)


def test_prepare_batch_reads_the_scale_target_at_the_centres():
    net = _model()
    smap = torch.full((1, 1, 64, 64), -1, dtype=torch.int8)
    smap[..., 32:, :] = 2
    centers = torch.tensor([[4, 4], [40, 8], [63, 63]])
    batch = {"image": torch.zeros(1, 1, 64, 64), "label": torch.zeros(1, 1, 64, 64, dtype=torch.long),
             "centers": centers[None], "scale_target": smap}
    _, (target, scale), _, _ = FoveatedPrepareBatch(net)(batch)
    assert target.shape == (3, 16, 16) and scale.tolist() == [-1, 2, 2]


def test_prior_teaches_the_head_a_location_dependent_choice():
    """With only the prior (backbone frozen by a zero learning rate), the head learns the target map: scale 2 on
    the bright half, scale 0 on the dark half (the low-resolution view tells them apart)."""
    img = np.zeros((1, 64, 64), np.float32)
    img[:, :, 32:] = 1.0
    lab = np.zeros((1, 64, 64), np.int64)
    smap = np.zeros((1, 64, 64), np.int8)
    smap[:, :, 32:] = 2
    net = _model()
    train_foveation(net, [{"image": img, "label": lab, "scale_target": smap}], num_classes=5, num_iterations=60,
                    lr=2e-2, flip=False, progress=False,
                    overrides={"prior_weight": 1.0, "prior_iterations": 1000,
                               "optimizer#params": [{"params": list(net.head.parameters())}]})
    net.eval()
    with torch.no_grad():
        w = net.scale_weights(net.lowres(torch.as_tensor(img)[None]))[0]
    assert float(w[0, :, :4].mean()) > 0.8 and float(w[2, :, 4:].mean()) > 0.8


def test_prior_without_scale_targets_warns_and_trains_on_the_segmentation_loss():
    """train.json's default recipe has the prior on; without fixed-scale checkpoints there are no targets: a warning
    says how to get them, and the loss is the segmentation loss alone."""
    net = _model()
    with pytest.warns(UserWarning, match="prior is off"):
        hist = train_foveation(net, _data(), num_classes=5, num_iterations=2, progress=False, seed=2)
    ref = _model()
    ref_hist = train_foveation(ref, _data(), num_classes=5, num_iterations=2, progress=False, seed=2,
                               overrides={"prior_weight": 0.0})
    assert hist["loss"] == ref_hist["loss"]
