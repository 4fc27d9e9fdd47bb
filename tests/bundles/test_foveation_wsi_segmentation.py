"""The foveation_wsi_segmentation bundle: metadata, network I/O, inference on a real pyramidal slide and a tile as a
user runs it, a failing run, and DDP training with gloo on CPU through torchrun."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from monai_fovea.apps.foveation_wsi import build_network
from monai_fovea.data.io import write_pyramidal_tiff
from monai_fovea.inferers import WSIFoveatedInferer

openslide = pytest.importorskip("openslide", reason="openslide-python is the bundle's default WSI backend")

NAME = "foveation_wsi_segmentation"
BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / NAME
REPO = BUNDLE.parents[1]

pytestmark = pytest.mark.slow


def _bundle_network() -> torch.nn.Module:
    net = build_network()
    net.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))
    return net.eval()


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_metadata_is_valid(meta_schema):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(meta_schema))


def test_network_in_out_and_weights():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_dense", meta_file=str(BUNDLE / "configs" / "metadata.json"),
                      config_file=str(BUNDLE / "configs" / "inference.json"), device="cpu", n=2)
    path = BUNDLE / "models" / "model.pt"
    assert path.stat().st_size < 5 * 2**20
    _bundle_network()  # a plain state dict of network_def: loads strictly


@pytest.fixture(scope="module")
def slide_crop(sample, tmp_path_factory):
    """A 512 × 384 px tissue crop of the sample slide (level 0), written as a 3-level JPEG pyramid at 0.499 µm/px,
    beside a 96 × 128 PNG tile of the same slide."""
    with tifffile.TiffFile(sample("cmu_slide")["image"]) as tif:
        level0 = tif.pages[0].asarray()
    folder = tmp_path_factory.mktemp("bundle_in")
    crop = level0[1200:1712, 800:1184]
    write_pyramidal_tiff(crop, folder / "crop.tif", mpp=0.499, tile=128, levels=3)
    Image.fromarray(level0[1300:1396, 900:1028]).save(folder / "tile.png")
    return folder


def test_inference_on_slide_and_tile(slide_crop, tmp_path, run_bundle):
    before = _digest(slide_crop)
    out = tmp_path / "out"
    run_bundle(NAME, "inference.json", input=str(slide_crop), output_dir=str(out), device="cpu")
    assert _digest(slide_crop) == before  # inputs untouched
    assert sorted(p.name for p in out.iterdir()) == [
        "crop.geojson", "crop_apsm.png", "crop_label.tif", "crop_overlay.png",
        "tile.geojson", "tile_apsm.png", "tile_mask.png", "tile_overlay.png",
    ]  # no temporary files left behind
    label_slide = openslide.OpenSlide(str(out / "crop_label.tif"))
    assert label_slide.dimensions == (384, 512)
    assert float(label_slide.properties["openslide.mpp-x"]) == pytest.approx(0.499, rel=1e-4)
    assert label_slide.level_count >= 2
    label_slide.close()
    label = tifffile.imread(out / "crop_label.tif")
    assert set(np.unique(label)) <= {0, 1, 2, 3}
    # the bundle run equals the library pipeline with the bundle's weights and settings
    ref_dir = tmp_path / "ref"
    inferer = WSIFoveatedInferer(sw_batch_size=32, backend="openslide", progress=False)
    ref = tifffile.imread(inferer(slide_crop / "crop.tif", _bundle_network(), ref_dir)["label"])
    np.testing.assert_array_equal(label, ref)
    # a tissue-rich crop: the trained model finds tissue and nuclei in it
    assert (label == 1).mean() > 0.2 and (label == 2).mean() > 0.01
    mask = np.asarray(Image.open(out / "tile_mask.png"))
    assert mask.shape == (96, 128) and set(np.unique(mask)) <= {0, 1, 2, 3}
    assert np.asarray(Image.open(out / "crop_overlay.png")).shape == (512, 384, 3)


def test_missing_input_is_named_in_the_last_line(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
           "--input", str(tmp_path / "missing.svs"), "--output_dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR (monai_fovea): FileNotFoundError") and "missing.svs" in last
    assert not out.exists() or not any(out.iterdir())


def test_a_corrupt_slide_is_reported_and_the_tile_beside_it_segmented(slide_crop, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "broken.svs").write_bytes((slide_crop / "crop.tif").read_bytes()[:5000])  # truncated
    (src / "tile.png").write_bytes((slide_crop / "tile.png").read_bytes())
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
           "--input", str(src), "--output_dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "monai_fovea: 1 of 2 input(s) failed (listed above)"
    assert any(line.startswith(f"FAILED {src / 'broken.svs'}: ") for line in lines)
    assert sorted(p.name for p in out.iterdir()) == ["tile.geojson", "tile_apsm.png", "tile_mask.png", "tile_overlay.png"]


def test_a_slide_scanned_at_half_the_um_per_px_gives_the_same_labels(slide_crop, tmp_path, run_bundle):
    """The crop upsampled 2x (0.2495 um/px, as a 40x scan of the same tissue): the bundle reads it at the model's
    0.499 um/px from the pyramid and writes labels on the 2x grid that, downsampled, agree with the native run."""
    with tifffile.TiffFile(slide_crop / "crop.tif") as tif:
        crop = tif.pages[0].asarray()
    src = tmp_path / "in"
    write_pyramidal_tiff(np.repeat(np.repeat(crop, 2, 0), 2, 1), src / "crop_x2.tif", mpp=0.2495, tile=128, levels=4)
    (src / "crop.tif").write_bytes((slide_crop / "crop.tif").read_bytes())
    out = tmp_path / "out"
    run_bundle(NAME, "inference.json", input=str(src), output_dir=str(out))
    native = tifffile.imread(out / "crop_label.tif")
    x2 = tifffile.imread(out / "crop_x2_label.tif")
    assert x2.shape == (2 * native.shape[0], 2 * native.shape[1])
    slide = openslide.OpenSlide(str(out / "crop_x2_label.tif"))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.2495, rel=1e-4)  # the slide's own grid
    slide.close()
    down = x2[::2, ::2]
    for k in range(3):
        a, b = native == k, down == k
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.95, k


def _train_cmd(tmp_path: Path, *extra: dict, multi_gpu: bool = False, **args) -> list[str]:
    """``-m monai.bundle run`` of train.json (+ multi_gpu_train.json) + tiny settings + ``extra`` override files."""
    files = [BUNDLE / "configs" / "train.json"] + ([BUNDLE / "configs" / "multi_gpu_train.json"] if multi_gpu else [])
    tiny = {"epoch_length": 2, "features": [4, 4, 4, 4, 4, 4], "sw_batch_size": 64}
    for i, override in enumerate((tiny, *extra)):
        files.append(tmp_path / f"override{i}.json")
        files[-1].write_text(json.dumps(override))
    cmd = ["-m", "monai.bundle", "run", "--config_file", repr([str(f) for f in files])]
    for key, value in args.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def _run(cmd: list[str], torchrun_procs: int = 0) -> subprocess.CompletedProcess:
    if torchrun_procs:
        # a free port of our own: ``--standalone`` rendezvouses on the fixed port 29400, which another torchrun
        # on the same machine (a parallel test worker) may hold
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = ["-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={torchrun_procs}",
               "--master_addr=127.0.0.1", f"--master_port={port}", *cmd]
    return subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})


SAVE_RANKS = {"run": [
    "$@train#trainer.run()",
    "$torch.save({'params': {k: v.detach().clone() for k, v in @network.named_parameters()}, "
    "'loss': @train#trainer.state.output['loss'].item()}, @output_dir + f'/rank{dist.get_rank()}.pt')"]}


@pytest.mark.parametrize("mode", ["soft", "fixed"])
def test_multi_gpu_train_ddp_gloo_cpu_ranks_end_identical(tmp_path, mode):
    """torchrun, 2 processes, gloo, train.json + multi_gpu_train.json, 2 epochs of 2 steps: both ranks train on the
    same slide with their own random locations and flips, and end with identical parameters; in ``fixed`` mode
    the head gets no gradient (DDP needs ``find_unused_parameters``, which the config sets from the mode)."""
    out = tmp_path / "runs"
    proc = _run(_train_cmd(tmp_path, SAVE_RANKS, multi_gpu=True, model_dir=tmp_path / "models", output_dir=out,
                           max_epochs=2, mode=mode), torchrun_procs=2)
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "Error" in ln or "error:" in ln]
    assert proc.returncode == 0, "\n".join(errors[-20:]) + proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["loss"] != r1["loss"]  # different samples on the two ranks ...
    assert r0["params"].keys() == r1["params"].keys()
    for k in r0["params"]:  # ... identical parameters afterwards (gradients all-reduced)
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    net = build_network(features=(4, 4, 4, 4, 4, 4), mode=mode)
    net.load_state_dict(torch.load(tmp_path / "models" / "model_last.pt", map_location="cpu", weights_only=True))
    assert all(torch.equal(p, r0["params"][k]) for k, p in net.named_parameters())  # rank 0 saved them
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pt", "model_last.pt"]
    # rank 0 writes: one TensorBoard file for the trainer and one for the evaluator (the file name holds the pid)
    events = list(out.glob("events.out.tfevents.*"))
    assert len(events) == 2 and len({p.name.rsplit(".", 2)[1] for p in events}) == 1
    resume = torch.load(out / "resume" / "resume.pt", weights_only=True)
    assert resume["trainer"]["iteration"] == 4 and len(resume["rng"]) == 2  # one random state per rank


def test_multi_gpu_train_in_fixed_mode_needs_find_unused_parameters(tmp_path):
    """The failure the config guards against: DDP without ``find_unused_parameters`` in ``fixed`` mode."""
    off = {"train#network#find_unused_parameters": False}
    proc = _run(_train_cmd(tmp_path, off, multi_gpu=True, model_dir=tmp_path / "models",
                           output_dir=tmp_path / "runs", max_epochs=1, mode="fixed"), torchrun_procs=2)
    assert proc.returncode != 0
    assert "Expected to have finished reduction" in proc.stdout + proc.stderr


def test_train_killed_mid_epoch_and_started_again_ends_with_the_same_weights(tmp_path):
    """SIGKILL after iteration 3 (epoch 2 of 3), the same command again: same final weights as the uninterrupted run
    (model, Adam, poly LR, iteration, random locations and flips restored)."""
    import signal

    kill = {"+imports": ["$import signal", "$from ignite.engine import Events"], "run": [
        "$@train#trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), "
        "lambda e: os.kill(os.getpid(), signal.SIGKILL))", "$@train#trainer.run()"]}
    runs = {}
    for name, extra in (("straight", ()), ("killed", (kill,)), ("killed_again", ())):
        folder = tmp_path / name.split("_")[0]
        runs[name] = _run(_train_cmd(tmp_path, *extra, model_dir=folder / "models", output_dir=folder / "runs",
                                     max_epochs=3))
    assert runs["straight"].returncode == 0, runs["straight"].stderr[-3000:]
    assert runs["killed"].returncode == -signal.SIGKILL
    assert runs["killed_again"].returncode == 0, runs["killed_again"].stderr[-3000:]
    a = torch.load(tmp_path / "straight" / "models" / "model_last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "models" / "model_last.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    initial = build_network(features=(4, 4, 4, 4, 4, 4)).state_dict()
    assert any(not torch.equal(a[k], initial[k]) for k in a if a[k].is_floating_point())


def test_evaluate_reproduces_the_documented_held_out_scores(tmp_path, run_bundle):
    """evaluate.json (the validation part of train.json with the streaming WSI inferer) on the held-out bottom
    half with the shipped weights: the numbers of the README and metadata.json."""
    import json as _json

    run_bundle(NAME, ["train.json", "evaluate.json"], output_dir=str(tmp_path), device="cpu")
    metrics = _json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_rows"] == [1483, 2967]
    assert metrics["iou"] == pytest.approx({"background": 0.916, "tissue": 0.624, "nuclei": 0.359,
                                            "epithelium": 0.542}, abs=5e-4)
    assert metrics["mean_iou"] == pytest.approx(0.610, abs=5e-4)
    assert metrics["pixel_accuracy"] == pytest.approx(0.873, abs=5e-4)
    assert metrics["inference"]["predicted"] == 748 and metrics["inference"]["skipped"] == 897
    assert (tmp_path / "cmu_small_region_label.tif").is_file()


def test_inference_default_sample_input(tmp_path, run_bundle):
    """The bundled default input (the cmu_slide sample) as a user runs it, only the output folder overridden."""
    run_bundle(NAME, "inference.json", output_dir=str(tmp_path))
    slide = openslide.OpenSlide(str(tmp_path / "cmu_small_region_label.tif"))
    assert slide.dimensions == (2220, 2967)
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.499, rel=1e-4)
    slide.close()
    label = tifffile.imread(tmp_path / "cmu_small_region_label.tif")
    fractions = [(label == k).mean() for k in range(3)]
    assert 0.5 < fractions[0] < 0.9 and fractions[1] > 0.1 and fractions[2] > 0.01  # ~70 % glass on this slide
    assert (tmp_path / "cmu_small_region_overlay.png").is_file() and (tmp_path / "cmu_small_region_apsm.png").is_file()


@pytest.mark.parametrize("value, expected", [("false", False), ("true", True), (True, True)])
def test_train_switches_read_as_booleans_however_spelled(value, expected):
    """``--balanced false`` on the command line is the string "false": the config reads it as False."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser["balanced"] = value
    centers = parser.get_parsed_content("train#preprocessing#transforms#3")
    assert type(centers).__name__ == "RandFoveationCentersd" and centers.sampler.balanced is expected
