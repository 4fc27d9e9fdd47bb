"""The demo (README's main job) finds every inference config of a bundle, the plain one first."""

from monai_fovea.apps.demo import inference_configs


def test_inference_configs_lists_every_inference_json_plain_first(tmp_path):
    configs = tmp_path / "b" / "configs"
    configs.mkdir(parents=True)
    for name in ("train.json", "inference_3d.json", "inference.json", "evaluate.json", "inference_wsi.json"):
        (configs / name).write_text("{}")
    assert [p.name for p in inference_configs("b", tmp_path)] == ["inference.json", "inference_3d.json",
                                                                  "inference_wsi.json"]


def test_the_shipped_bundles_inference_configs():
    # segment_then_segment ships a 2D and a NIfTI (3D) config; the demo runs both
    assert [p.name for p in inference_configs("segment_then_segment")] == ["inference.json", "inference_3d.json"]
    assert [p.name for p in inference_configs("sparse_skull_completion")] == ["inference.json"]
