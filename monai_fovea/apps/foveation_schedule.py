"""Training options of the foveation recipe that make the head learn *where to look* (issue 12), as pieces of the
bundle's MONAI workflow (``configs/train.json`` keys in brackets; every option is off by default):

* :func:`head_param_groups` — a separate learning rate for the foveation head (``head_lr_scale``): the authors'
  follow-up on learned downsampling needed its sampler to learn 10× faster than the segmentation net.
* :class:`FoveationSchedule` — an ignite handler that sets, from the trainer's iteration (so a resumed run gets
  the same values), the segmenter's ``mode`` during a backbone warm-up (``warmup_mode`` ``"random"`` or
  ``"average"`` for ``warmup_iterations``; the head is unused then), the Gumbel temperature (``tau_start`` →
  ``tau_end``, exponential) and the weight of the auxiliary scale prior (``prior_weight``, linear decay to 0
  over ``prior_iterations``) on :class:`~monai_fovea.apps.foveation.FoveatedLoss`.
* :class:`FoveatedIteration` — the authors' update (``Zero_Step_Grad``): the backbone steps on each of
  ``location_chunks`` groups of an image's locations while the head's gradient is summed over all of them and
  applied once per image (``location_chunks``).

The entropy term (``entropy_weight``, either sign) and the prior term are in
:class:`~monai_fovea.apps.foveation.FoveatedLoss`; the per-location best fixed scale the prior supervises towards
comes from :mod:`monai_fovea.apps.foveation_oracle`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys

__all__ = ["head_param_groups", "FoveationSchedule", "FoveatedIteration"]


def _segmenter(network: torch.nn.Module) -> torch.nn.Module:
    return getattr(network, "module", network)  # DDP → the FoveatedSegmenter


def head_param_groups(network: torch.nn.Module, lr: float, head_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Optimiser parameter groups: everything but the head at ``lr``, the foveation head at ``lr * head_lr_scale``
    (a ``PolynomialLR`` then decays both).

    Example:
        >>> from monai_fovea.networks import FoveatedSegmenter
        >>> net = FoveatedSegmenter(None, [8, 16], 8, 2, in_channels=1, num_classes=2)
        >>> [g["lr"] for g in head_param_groups(net, 1e-3, 10.0)]
        [0.001, 0.01]
    """
    head = list(_segmenter(network).head.parameters())
    head_ids = {id(p) for p in head}
    rest = [p for p in network.parameters() if id(p) not in head_ids]
    return [{"params": rest, "lr": float(lr)}, {"params": head, "lr": float(lr) * float(head_lr_scale)}]


class FoveationSchedule:
    """Per-iteration settings of a foveation training run, computed from ``engine.state.iteration`` (resume-safe).

    Args:
        network: the :class:`~monai_fovea.networks.FoveatedSegmenter` (or DDP around one).
        loss: the :class:`~monai_fovea.apps.foveation.FoveatedLoss` whose ``prior_weight`` is scheduled.
        warmup_mode: ``"random"``/``"average"``/``"fixed"``: the segmenter's mode for the first
            ``warmup_iterations`` steps (the backbone learns every scale before the head chooses); ``None``: off.
        warmup_iterations: length of the warm-up.
        tau_start, tau_end: Gumbel-softmax temperature at the first and the last step (exponential in between;
            the authors' option anneals ``exp(-t / T)`` down to 0.1).
        total_iterations: steps of the run (for the temperature schedule).
        prior_weight: initial weight of the auxiliary scale prior; it decays linearly to 0 at ``prior_iterations``.
        prior_iterations: steps over which the prior decays.

    Example:
        >>> sched = FoveationSchedule(net, loss, warmup_mode="random", warmup_iterations=500)  # doctest: +SKIP
        >>> sched.attach(trainer)  # doctest: +SKIP
    """

    def __init__(
        self,
        network: torch.nn.Module,
        loss: torch.nn.Module | None = None,
        warmup_mode: str | None = None,
        warmup_iterations: int = 0,
        tau_start: float = 1.0,
        tau_end: float = 1.0,
        total_iterations: int = 1,
        prior_weight: float = 0.0,
        prior_iterations: int = 0,
    ) -> None:
        from monai_fovea.networks.foveated_segmenter import FOVEATION_MODES

        if warmup_mode is not None and warmup_mode not in FOVEATION_MODES:
            raise ValueError(f"warmup_mode must be None or one of {FOVEATION_MODES}, got {warmup_mode!r}.")
        if tau_start <= 0 or tau_end <= 0:
            raise ValueError(f"temperatures must be > 0, got tau_start={tau_start}, tau_end={tau_end}.")
        if prior_weight and loss is None:
            raise ValueError("prior_weight needs the FoveatedLoss to set it on (loss=None).")
        self.network = network
        self.loss = loss
        self.mode = _segmenter(network).mode  # the mode after the warm-up
        self.warmup_mode = warmup_mode
        self.warmup_iterations = int(warmup_iterations) if warmup_mode is not None else 0
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.total_iterations = max(1, int(total_iterations))
        self.prior_weight = float(prior_weight)
        self.prior_iterations = int(prior_iterations)

    def values(self, step: int) -> dict[str, Any]:
        """Settings of step ``step`` (0-based): ``{"mode", "tau", "prior_weight"}``.

        Example:
            >>> from monai_fovea.networks import FoveatedSegmenter
            >>> net = FoveatedSegmenter(None, [8, 16], 8, 2, in_channels=1, num_classes=2)
            >>> s = FoveationSchedule(net, torch.nn.Module(), warmup_mode="random", warmup_iterations=5,
            ...                       tau_start=1.0, tau_end=0.1, total_iterations=11, prior_weight=2.0,
            ...                       prior_iterations=4)
            >>> [s.values(t)["mode"] for t in (4, 5)], round(s.values(10)["tau"], 3), s.values(1)["prior_weight"]
            (['random', 'soft'], 0.1, 1.5)
        """
        frac = min(1.0, step / max(1, self.total_iterations - 1))
        tau = self.tau_start * math.exp(frac * math.log(self.tau_end / self.tau_start))
        if self.prior_iterations > 0:
            prior = self.prior_weight * max(0.0, 1.0 - step / self.prior_iterations)
        else:
            prior = 0.0
        mode = self.warmup_mode if step < self.warmup_iterations else self.mode
        return {"mode": mode, "tau": tau, "prior_weight": prior}

    def __call__(self, engine: Engine) -> None:
        v = self.values(engine.state.iteration - 1)  # ignite counts iterations from 1 at ITERATION_STARTED
        net = _segmenter(self.network)
        net.mode, net.tau = v["mode"], v["tau"]
        if self.loss is not None:
            self.loss.prior_weight = v["prior_weight"]

    def _restore(self, engine: Engine) -> None:
        _segmenter(self.network).mode = self.mode

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)
        # between steps the network is in its own mode: validation, checkpoints and the end of a run shorter than
        # its warm-up see the mode that is trained, never the warm-up's
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._restore)


def _slice_target(target: Any, idx: slice) -> Any:
    if isinstance(target, (tuple, list)):
        return type(target)(t[idx] for t in target)
    return target[idx]


class FoveatedIteration:
    """``iteration_update`` of MONAI's ``SupervisedTrainer`` as in the authors' code: the image's locations are
    split into ``location_chunks`` groups; the backbone (and everything but the head) takes one optimiser step per
    group, while the foveation head's gradient is summed over all groups and applied once per image.

    With ``location_chunks=1`` it is the trainer's own step. Uses the trainer's ``prepare_batch``, ``inferer``,
    ``loss_function`` and ``optimizer`` (one optimiser holding head and backbone, e.g. :func:`head_param_groups`).

    Example:
        >>> trainer = SupervisedTrainer(..., iteration_update=FoveatedIteration(16))  # doctest: +SKIP
    """

    def __init__(self, location_chunks: int = 16) -> None:
        if location_chunks < 1:
            raise ValueError(f"location_chunks must be >= 1, got {location_chunks}.")
        self.location_chunks = int(location_chunks)

    def __call__(self, engine: Any, batchdata: dict) -> dict:
        image, target, args, kwargs = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        (centers,) = args
        head = [p for p in _segmenter(engine.network).head.parameters() if p.requires_grad]
        head_ids = {id(p) for p in head}
        others = [p for g in engine.optimizer.param_groups for p in g["params"] if id(p) not in head_ids]
        summed: list[torch.Tensor | None] = [None] * len(head)
        engine.network.train()
        n = centers.shape[0]
        bounds = [round(i * n / self.location_chunks) for i in range(self.location_chunks + 1)]
        preds, losses = [], []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi <= lo:
                continue
            engine.optimizer.zero_grad(set_to_none=True)
            pred = engine.inferer(image, engine.network, centers[lo:hi], **kwargs)
            loss = engine.loss_function(pred, _slice_target(target, slice(lo, hi))).mean()
            loss.backward()
            for i, p in enumerate(head):  # keep the head's gradient for the end of the image; step the rest now
                if p.grad is not None:
                    summed[i] = p.grad.detach().clone() if summed[i] is None else summed[i] + p.grad
                    p.grad = None
            engine.optimizer.step()
            preds.append(pred[0].detach() if isinstance(pred, (tuple, list)) else pred.detach())
            losses.append(loss.detach() * (hi - lo) / n)
        for p in others:
            p.grad = None
        for p, g in zip(head, summed):
            p.grad = g
        if any(g is not None for g in summed):
            engine.optimizer.step()  # the head only: every other gradient is None, which torch's optimisers skip
        engine.optimizer.zero_grad(set_to_none=True)
        return {Keys.IMAGE: image, Keys.LABEL: target, Keys.PRED: torch.cat(preds), Keys.LOSS: torch.stack(losses).sum()}
