"""bundle_root(): the configs' own folder from any working directory."""

import pytest

from monai_fovea.apps.bundles import BUNDLES_DIR, available_bundles, bundle_root


def test_bundle_root_from_elsewhere_and_from_inside(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bundle_root("segment_then_segment") == str(BUNDLES_DIR / "segment_then_segment")
    monkeypatch.chdir(BUNDLES_DIR / "sparse_skull_completion")
    assert bundle_root("sparse_skull_completion") == str(BUNDLES_DIR / "sparse_skull_completion")


def test_unknown_bundle_names_the_bundle():
    with pytest.raises(FileNotFoundError, match="'no_such_bundle'"):
        bundle_root("no_such_bundle")


def test_the_three_bundles_have_inference_configs():
    assert available_bundles() == ["foveation_wsi_segmentation", "segment_then_segment", "sparse_skull_completion"]
