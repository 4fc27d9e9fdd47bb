"""monai_fovea.apps.training: a SupervisedTrainer killed mid-epoch and started again with the same command ends with
the same weights as an uninterrupted run; the random states of MONAI transforms round-trip; atomic best checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_fovea.apps.training import (
    AtomicCheckpointSaver,
    ResumeCheckpoint,
    RNGState,
    randomizable_transforms,
)

SCRIPT = Path(__file__).with_name("resume_trainer.py")
ITERATIONS_PER_EPOCH = 3  # 6 items, batch 2


def _train(out: Path, max_epochs: int, kill_at: int | None = None) -> subprocess.CompletedProcess:
    args = [sys.executable, str(SCRIPT), str(out), str(max_epochs)] + ([str(kill_at)] if kill_at else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_killed_mid_epoch_and_restarted_ends_with_the_same_weights(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _ok(_train(straight, 4))
    # SIGKILL right after the 2nd iteration of epoch 3: the last checkpoint is the end of epoch 2
    proc = _train(killed, 4, kill_at=2 * ITERATIONS_PER_EPOCH + 2)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final.pt").exists()
    ckpt = torch.load(killed / "ckpt" / "resume.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2 * ITERATIONS_PER_EPOCH
    assert [p.name for p in (killed / "ckpt").iterdir()] == ["resume.pt"]  # no temporary left behind
    _ok(_train(killed, 4))  # the same command again
    a = torch.load(straight / "final.pt", weights_only=True)
    b = torch.load(killed / "final.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    s, k = (json.loads((d / "summary.json").read_text()) for d in (straight, killed))
    assert s["resumed_epoch"] == 0 and k["resumed_epoch"] == 2
    assert k["epoch"] == s["epoch"] == 4 and k["iteration"] == s["iteration"] == 4 * ITERATIONS_PER_EPOCH
    assert k["lr"] == s["lr"] == pytest.approx(1e-2 * 0.7**4)  # the scheduler continued, it did not restart
    # the best epoch is chosen over the whole run, not only over the epochs after the restart
    assert (k["best_metric"], k["best_metric_epoch"]) == (s["best_metric"], s["best_metric_epoch"])
    best_a = torch.load(straight / "best.pt", weights_only=True)
    best_b = torch.load(killed / "best.pt", weights_only=True)
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)  # a plain state dict, the same in both runs


def test_a_finished_run_does_nothing_more_and_max_epochs_extends_it(tmp_path):
    _ok(_train(tmp_path, 2))
    first = torch.load(tmp_path / "final.pt", weights_only=True)
    _ok(_train(tmp_path, 2))  # already at max_epochs: loads, trains nothing
    again = torch.load(tmp_path / "final.pt", weights_only=True)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert json.loads((tmp_path / "summary.json").read_text())["iteration"] == 2 * ITERATIONS_PER_EPOCH
    _ok(_train(tmp_path, 3))  # continues for one more epoch
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_epoch"] == 2 and summary["iteration"] == 3 * ITERATIONS_PER_EPOCH
    more = torch.load(tmp_path / "final.pt", weights_only=True)
    assert not all(torch.equal(first[k], more[k]) for k in first)


def test_rng_state_round_trips_nested_monai_random_states():
    from monai.transforms import Compose, RandAffined, RandFlipd

    tf = Compose([RandFlipd("img", prob=0.5), RandAffined("img", prob=1.0, rotate_range=0.5)])
    tf.set_random_state(3)
    found = randomizable_transforms(tf)
    # RandAffined keeps two more random states inside (RandAffine, RandAffineGrid): all are saved
    assert [type(t).__name__ for t in found] == ["Compose", "RandFlipd", "RandAffined", "RandAffine", "RandAffineGrid"]
    rng = RNGState(tf)
    state = rng.state_dict()
    img = np.arange(64, dtype=np.float32).reshape(1, 8, 8)

    def draw():
        out = tf({"img": img})["img"]
        return np.asarray(out), np.random.rand(), torch.rand(2), __import__("random").random()

    first = draw()
    rng.load_state_dict(state)
    second = draw()
    assert np.array_equal(first[0], second[0]) and first[1] == second[1] and first[3] == second[3]
    assert torch.equal(first[2], second[2])
    # a saved state is loadable with weights_only=True (what ResumeCheckpoint reads)
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    rng.load_state_dict(torch.load(buf, weights_only=True))
    assert np.array_equal(np.asarray(tf({"img": img})["img"]), first[0])


def test_rng_state_refuses_a_changed_transform_chain():
    from monai.transforms import RandFlipd

    state = RNGState(RandFlipd("x", prob=0.5)).state_dict()
    with pytest.raises(ValueError, match="holds the states of 1 random transforms, the transform chain has 0"):
        RNGState(None).load_state_dict(state)


def test_resume_checkpoint_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="save_every_epochs"):
        ResumeCheckpoint(tmp_path, {}, save_every_epochs=0)
    with pytest.raises(ValueError, match="added by ResumeCheckpoint"):
        ResumeCheckpoint(tmp_path, {"trainer": object()})


def test_atomic_checkpoint_saver_writes_a_plain_state_dict_through_a_rename(tmp_path):
    from ignite.engine import Engine, Events

    net = torch.nn.Linear(3, 1)
    scores = iter([0.5, 0.9, 0.7])
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _score(e):
        e.state.metrics = {"dsc": next(scores)}
        with torch.no_grad():
            net.bias.fill_(e.state.epoch)  # the weights of epoch e carry e

    saver = AtomicCheckpointSaver(str(tmp_path / "models"), {"model": net}, save_key_metric=True,
                                  key_metric_name="dsc", key_metric_filename="model.pt")
    saver.attach(engine)
    assert saver._key_metric_checkpoint.save_handler._atomic
    engine.run([0], max_epochs=3)
    sd = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert set(sd) == {"weight", "bias"} and sd["bias"].item() == 2.0  # epoch 2 had the best score
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["model.pt"]
