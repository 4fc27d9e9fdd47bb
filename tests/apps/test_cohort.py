"""The cohort machinery every bundle's inference runs on: failures per file, root causes, switches, sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from monai_fovea.apps.cohort import FailSafeDataset, flag, root_cause, shard_for_rank, torch_device
from monai_fovea.data.io import write_nifti


def test_root_cause_skips_monai_wrappers_but_keeps_our_message():
    try:
        try:
            try:
                raise OSError("reader: bad magic")
            except OSError as inner:
                raise ValueError("/data/a.svs: cannot be opened as a slide (OSError: bad magic)") from inner
        except ValueError as ours:
            raise RuntimeError("applying transform <SlideInputd>") from ours
    except RuntimeError as outer:
        assert root_cause(outer) == "ValueError: /data/a.svs: cannot be opened as a slide (OSError: bad magic)"


def test_root_cause_is_one_line():
    assert root_cause(ValueError("a\n  b\tc")) == "ValueError: a b c"
    assert root_cause(KeyError()) == "KeyError"


@pytest.mark.parametrize("value,expected", [(True, True), (False, False), ("true", True), ("False", False),
                                            ("no", False), ("YES", True), (1, True), (0, False), ("0", False)])
def test_flag_reads_command_line_spellings(value, expected):
    assert flag(value) is expected


def test_flag_refuses_anything_else():
    with pytest.raises(ValueError, match="expected true or false, got 'maybe'"):
        flag("maybe")


def test_shard_without_a_process_group_is_everything():
    assert shard_for_rank([{"image": "a"}, {"image": "b"}]) == [{"image": "a"}, {"image": "b"}]


def test_torch_device_refuses_cuda_without_cuda():
    assert torch_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal under test cannot happen here")
    with pytest.raises(RuntimeError, match=r"--device cuda: .* sees no CUDA GPU; run with --device cpu"):
        torch_device("cuda")


def test_fail_safe_dataset_turns_a_bad_file_into_a_failed_item(tmp_path):
    write_nifti(np.ones((4, 4, 4), np.uint8), tmp_path / "good.nii.gz", np.eye(4))
    (tmp_path / "bad.nii.gz").write_bytes(b"not gzip at all")
    load = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])
    ds = FailSafeDataset([{"image": str(tmp_path / "good.nii.gz")}, {"image": str(tmp_path / "bad.nii.gz")}], load)
    assert tuple(ds[0]["image"].shape) == (1, 4, 4, 4)
    bad = ds[1]
    assert set(bad) == {"failed", "source"} and bad["source"] == str(tmp_path / "bad.nii.gz")
    assert not bad["failed"].startswith("RuntimeError: applying transform")  # the cause, not MONAI's wrapper


def test_monai_reader_tracebacks_are_cut_to_the_first_readers_error(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    load = Compose([LoadImaged("image", reader="NibabelReader", image_only=True)])  # as the NIfTI bundles
    failed = FailSafeDataset([{"image": str(tmp_path / "broken.nii.gz")}], load)[0]["failed"]
    assert "Traceback" not in failed and "Please install" not in failed
    assert failed.startswith(f"RuntimeError: LoadImage cannot find a suitable reader for file: {tmp_path / 'broken.nii.gz'} (")
    assert failed.endswith(f'ImageFileError: Cannot work out file type of "{tmp_path / "broken.nii.gz"}")')
