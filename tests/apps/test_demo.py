"""The demo (README's main job) runs each bundle's inference.json, then each override file layered on it."""

from monai_fovea.apps.demo import inference_configs


def test_inference_configs_layers_each_variant_on_the_base_config(tmp_path):
    configs = tmp_path / "b" / "configs"
    configs.mkdir(parents=True)
    for name in ("train.json", "inference_3d.json", "inference.json", "evaluate.json", "inference_wsi.json",
                 "multi_gpu_inference.json"):
        (configs / name).write_text("{}")
    runs = [[p.name for p in run] for run in inference_configs("b", tmp_path)]
    assert runs == [["inference.json"], ["inference.json", "inference_3d.json"], ["inference.json", "inference_wsi.json"]]


def test_the_shipped_bundles_inference_configs():
    # segment_then_segment ships a 2D config and a NIfTI (3D) override; the demo runs both
    runs = [[p.name for p in run] for run in inference_configs("segment_then_segment")]
    assert runs == [["inference.json"], ["inference.json", "inference_3d.json"]]
    assert [[p.name for p in run] for run in inference_configs("sparse_skull_completion")] == [["inference.json"]]
