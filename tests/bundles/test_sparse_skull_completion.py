"""sparse_skull_completion bundle: metadata, network I/O, and inference run as a user runs it."""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("spconv.pytorch", reason="needs the 'spconv' package (pip install spconv)")

from monai.bundle import verify_metadata, verify_net_in_out  # noqa: E402

from monai_fovea.apps.sparse_completion import make_defect_case  # noqa: E402
from monai_fovea.data.synthetic import skull_shell  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "sparse_skull_completion"
AFFINE = np.array([[-0.8, 0, 0, 40.0], [0, 0.8, 0, -30.0], [0, 0, 1.2, 12.5], [0, 0, 0, 1]])


def _defective_nifti(path, seed=0):
    case = make_defect_case(skull_shell((48, 48, 40), seed=seed, thickness=(3, 5)).astype(bool), seed, (5, 8))
    nib.save(nib.Nifti1Image(case["defective"].astype(np.uint8), AFFINE), str(path))
    return case


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_metadata_verifies(meta_schema):
    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(meta_schema))


def test_dense_wrapper_network_in_out():
    verify_net_in_out(net_id="network_def", meta_file=str(BUNDLE / "configs" / "metadata.json"),
                      config_file=str(BUNDLE / "configs" / "inference.json"), device="cpu", n=1,
                      bundle_root=str(BUNDLE))


def test_inference_writes_implant_with_input_affine_and_leaves_input_untouched(run_bundle, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    case = _defective_nifti(src / "skull_a.nii.gz")
    before = _digest(src / "skull_a.nii.gz")
    out = tmp_path / "out"
    run_bundle("sparse_skull_completion", "inference.json", input=src, output_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["skull_a_completed.nii.gz", "skull_a_implant.nii.gz"]
    assert _digest(src / "skull_a.nii.gz") == before
    implant = nib.load(str(out / "skull_a_implant.nii.gz"))
    completed = nib.load(str(out / "skull_a_completed.nii.gz"))
    for img in (implant, completed):
        assert img.shape == case["defective"].shape == (48, 48, 40)
        assert np.allclose(img.affine, AFFINE, atol=1e-6)
    imp = np.asarray(implant.dataobj) > 0
    comp = np.asarray(completed.dataobj) > 0
    assert not (imp & case["defective"]).any()  # the implant only adds voxels
    assert np.array_equal(comp, case["defective"] | imp)


def test_one_bad_file_does_not_stop_the_folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _defective_nifti(src / "a_good.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((5, 5), np.uint8), np.eye(4)), str(src / "b_flat.nii.gz"))  # not 3D
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
           "--input", str(src), "--output_dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "monai_fovea: 1 of 2 input(s) failed (listed above)"
    assert any(line.startswith(f"FAILED {src / 'b_flat.nii.gz'}: ") and "3D" in line for line in lines)
    assert sorted(p.name for p in out.iterdir()) == ["a_good_completed.nii.gz", "a_good_implant.nii.gz"]


def test_default_input_in_any_orientation_order_or_spacing_gives_the_same_implant(run_bundle, tmp_path):
    """The sample defect stored as LPS, with its axes permuted, and resampled to 0.7 mm: each result, mapped back
    to the reference grid, agrees with the reference run (and every output has its input's shape and affine)."""
    from nifti_variants import dice, permute, reorient, resample, to_reference

    from monai_fovea.apps.sparse_completion import default_input
    from monai_fovea.data.io import write_nifti

    ref_img = nib.load(default_input())
    ref, aff = np.asarray(ref_img.dataobj), ref_img.affine
    truth = np.asarray(nib.load(default_input().replace(".nii.gz", "_implant.nii.gz")).dataobj) > 0
    variants = {"ref": (ref, aff), "lps": reorient(ref, aff, "LPS"), "permuted": permute(ref, aff, (2, 0, 1)),
                "iso07": resample(ref, aff, (0.7, 0.7, 0.7), binary=True)}
    src = tmp_path / "in"
    for name, (array, affine) in variants.items():
        write_nifti(array.astype(np.uint8), src / f"{name}.nii.gz", affine)
    out = tmp_path / "out"
    run_bundle("sparse_skull_completion", "inference.json", input=src, output_dir=out)
    implants = {}
    for name, (array, affine) in variants.items():
        img = nib.load(str(out / f"{name}_implant.nii.gz"))
        assert img.shape == array.shape
        assert np.allclose(img.affine, affine, atol=1e-4)
        implants[name] = to_reference(np.asarray(img.dataobj), img.affine, ref.shape, aff)
    assert dice(implants["ref"], truth) > 0.85  # the reference run itself is right (0.906 measured)
    # the same array reaches the network after Orientationd: bit-identical
    assert np.array_equal(implants["lps"], implants["ref"])
    assert np.array_equal(implants["permuted"], implants["ref"])
    assert dice(implants["iso07"], implants["ref"]) >= 0.9  # 0.999 measured


# --- training (configs/train.json: a MONAI SupervisedTrainer workflow) -------------------------------------------
# tiny settings: small synthetic skulls instead of the CT skull, a 3-level network, 4 iterations per epoch
TINY_TRAIN = {
    "channels": [2, 4, 4],
    "defect_radii": [4.0, 6.0],
    "epoch_length": 4,
    "learning_rate": 0.01,
    "tiny_skulls": "$monai_fovea.apps.sparse_completion.synthetic_skulls([7, 8], (40, 40, 32))",
    "train#skulls": "@tiny_skulls",
    "validate#datalist": "$monai_fovea.apps.skull_training.defect_datalist([{'name': f'synthetic7/defect{s}', "
                         "**monai_fovea.apps.sparse_completion.make_defect_case(@tiny_skulls[0], s, (4, 6))} "
                         "for s in (10, 11)])",
}


def _train_cmd(tmp_path, extra_configs=(), multi_gpu=False, overrides=None, **args):
    """``[python, -m, monai.bundle, run, ...]`` for train.json (+ multi_gpu_train.json) + the tiny settings."""
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({**TINY_TRAIN, **(overrides or {})}))
    configs = [str(BUNDLE / "configs" / "train.json")]
    if multi_gpu:
        configs.append(str(BUNDLE / "configs" / "multi_gpu_train.json"))
    configs += [str(tiny), *map(str, extra_configs)]
    cmd = ["-m", "monai.bundle", "run", "--config_file", repr(configs)]
    for key, value in args.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def _run(cmd, torchrun_procs=0):
    if torchrun_procs:
        with socket.socket() as sock:  # a free port of our own (--standalone's fixed 29400 may be taken)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = ["-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={torchrun_procs}",
               "--master_addr=127.0.0.1", f"--master_port={port}", *cmd]
    return subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=600, cwd=BUNDLE.parents[1],
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def test_train_config_trains_validates_and_writes_best_and_last(tmp_path):
    import torch

    from monai_fovea.apps.sparse_completion import build_network

    out = tmp_path / "runs"
    _ok(_run(_train_cmd(tmp_path, model_dir=tmp_path / "models", output_dir=out, max_epochs=2)))
    models = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert models == ["model.pt", "model_last.pt"]  # best by validation implant DSC, and the last
    net = build_network((2, 4, 4))
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    last = torch.load(tmp_path / "models" / "model_last.pt", weights_only=True)
    net.load_state_dict(last)  # a plain state dict of the bundle network (SparseAsDense keys)
    assert any(not torch.equal(initial[k], last[k]) for k in initial if initial[k].is_floating_point())
    resume = torch.load(out / "resume" / "resume.pt", weights_only=True)
    assert resume["trainer"]["iteration"] == 8 and resume["trainer"]["epoch_length"] == 4  # 2 epochs
    assert resume["optimizer"]["param_groups"][0]["amsgrad"] is True
    assert list(out.glob("events.out.tfevents.*"))  # TensorBoard scalars


def test_time_limit_stops_after_the_first_iteration_and_still_saves(tmp_path):
    import torch

    proc = _run(_train_cmd(tmp_path, model_dir=tmp_path / "models", output_dir=tmp_path / "runs", max_epochs=3,
                           time_limit_s=0))
    _ok(proc)
    assert "time limit 0 s reached after 1 iterations" in proc.stdout + proc.stderr
    assert (tmp_path / "models" / "model_last.pt").is_file()
    assert not (tmp_path / "runs" / "resume").exists()  # stopped mid-epoch: no epoch ended, nothing to resume
    assert torch.load(tmp_path / "models" / "model_last.pt", weights_only=True)


def test_multi_gpu_train_runs_ddp_with_gloo_on_cpu_and_ranks_end_identical(tmp_path):
    """torchrun, 2 processes, gloo: each rank draws its own skulls and defects (seed + rank), gradients are
    all-reduced, so the parameters are identical on both ranks afterwards; rank 0 writes the checkpoints."""
    import torch

    from monai_fovea.apps.sparse_completion import build_network

    save = tmp_path / "save_ranks.json"
    save.write_text(json.dumps({"run": [
        "$@train#trainer.run()",
        "$torch.save({'params': {k: v.detach().clone() for k, v in @network.named_parameters()}, 'loss': "
        "@train#trainer.state.output['loss'].item()}, @output_dir + f'/rank{dist.get_rank()}.pt')"]}))
    out = tmp_path / "runs"
    # a time limit that never triggers: its stop decision is all-reduced at every iteration, which must not hang DDP
    proc = _run(_train_cmd(tmp_path, [save], multi_gpu=True, model_dir=tmp_path / "models", output_dir=out,
                           max_epochs=2, time_limit_s=1000), torchrun_procs=2)
    _ok(proc)
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["loss"] != r1["loss"]  # the ranks trained on different samples ...
    assert r0["params"].keys() == r1["params"].keys() and len(r0["params"]) > 0
    for k in r0["params"]:  # ... and end with the same parameters
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    torch.manual_seed(0)
    net = build_network((2, 4, 4))
    net.load_state_dict(torch.load(tmp_path / "models" / "model_last.pt", weights_only=True))
    trained = dict(net.named_parameters())
    assert all(torch.equal(trained[k], r0["params"][k]) for k in r0["params"])  # rank 0 saved them
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pt", "model_last.pt"]  # no temporaries
    # rank 0 writes: one TensorBoard file for the trainer and one for the evaluator, none from rank 1
    assert len({p.name.rsplit(".", 2)[1] for p in out.glob("events.out.tfevents.*")}) == 1
    assert len(list(out.glob("events.out.tfevents.*"))) == 2
    # 2 ranks x 2 iterations per epoch (4 samples split by the DistributedSampler), 2 epochs
    assert torch.load(out / "resume" / "resume.pt", weights_only=True)["trainer"]["iteration"] == 4


def test_killed_mid_epoch_and_started_again_ends_with_the_same_weights(tmp_path):
    """SIGKILL in the middle of epoch 2 of 3, the same command again: it resumes from the end of epoch 1
    (model, optimiser, scheduler, iteration, the random states of the skull / defect / crop draws) and ends with
    the weights of the uninterrupted run, bit for bit (CPU, one thread, fixed seed)."""
    import signal

    import torch

    kill = tmp_path / "kill.json"
    kill.write_text(json.dumps({"+imports": ["$import signal", "$from ignite.engine import Events"], "run": [
        "$@train#trainer.add_event_handler(Events.ITERATION_COMPLETED(once=6), lambda e: os.kill(os.getpid(), signal.SIGKILL))",
        "$@train#trainer.run()"]}))
    args = dict(max_epochs=3)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _ok(_run(_train_cmd(tmp_path, model_dir=straight / "models", output_dir=straight / "runs", **args)))
    proc = _run(_train_cmd(tmp_path, [kill], model_dir=killed / "models", output_dir=killed / "runs", **args))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (killed / "models" / "model_last.pt").exists()
    assert torch.load(killed / "runs" / "resume" / "resume.pt", weights_only=True)["trainer"]["iteration"] == 4
    proc = _run(_train_cmd(tmp_path, model_dir=killed / "models", output_dir=killed / "runs", **args))
    _ok(proc)
    assert "resumed from" in proc.stdout + proc.stderr
    for name in ("model_last.pt", "model.pt"):  # the last weights, and the best-by-validation ones
        a = torch.load(straight / "models" / name, weights_only=True)
        b = torch.load(killed / "models" / name, weights_only=True)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), (name, [k for k in a if not torch.equal(a[k], b[k])])


def test_evaluate_config_scores_the_shipped_model_on_a_held_out_ct_defect(run_bundle, tmp_path):
    # evaluate.json is layered on train.json and runs its validation part (SupervisedEvaluator) on held-out
    # cases with the shipped weights; one case keeps this to seconds (README: 0.906 on this case)
    run_bundle("sparse_skull_completion", ["train.json", "evaluate.json"], output_dir=tmp_path, device="cpu",
               cases="$monai_fovea.apps.sparse_completion.evaluation_cases(num_ct=1, num_synthetic=0, num_mri=0)")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    (case,) = metrics["cases"]
    assert case["name"] == "ct_head/defect0"
    assert case["dice"] == pytest.approx(0.906, abs=0.0005)  # the documented value for this case
    assert case["border_dice"] > 0.8 and case["hd95"] == pytest.approx(1.35, abs=0.01)  # mm
    assert metrics["mean"]["dice"] == case["dice"] == metrics["groups"]["ct_head"]["dice"]
