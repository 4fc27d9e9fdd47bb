"""Label masks → QuPath GeoJSON: polygons rasterise back to the mask, regions crossing bands are merged, the file has
QuPath's properties and is written atomically, and a TIFF mask is read band by band (peak memory far below the mask)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

shapely = pytest.importorskip("shapely", reason="shapely (the `wsi` extra) is needed for GeoJSON polygons")

from monai_fovea.data.geojson import (  # noqa: E402
    DEFAULT_CLASS_COLORS,
    label_array_to_geojson,
    label_tiff_to_geojson,
    polygonize_labels,
)
from monai_fovea.data.io import write_pyramidal_tiff  # noqa: E402

NAMES = {1: "tissue", 2: "nuclei"}
COLORS = {1: (0, 170, 0), 2: (200, 0, 200)}


def rasterize(features: list[dict], label: int, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside a polygon of ``label`` (QuPath's convention: pixel (r, c) covers
    [c, c + 1) x [r, r + 1))."""
    out = np.zeros(shape, bool)
    for f in features:
        if f["properties"]["label"] != label:
            continue
        geom = shapely.geometry.shape(f["geometry"])
        x0, y0, x1, y1 = (int(np.floor(geom.bounds[0])), int(np.floor(geom.bounds[1])),
                          int(np.ceil(geom.bounds[2])), int(np.ceil(geom.bounds[3])))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        out[y0:y1, x0:x1] |= shapely.contains_xy(geom, xx + 0.5, yy + 0.5)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def n_regions(mask: np.ndarray) -> int:
    return ndimage.label(mask)[1]  # 4-connectivity (the default 2-D structure), as the polygons


def synthetic_labels() -> np.ndarray:
    """600 x 500 mask: a class-1 ring with a class-2 disc in its hole, a class-2 'U' whose arms join only in a lower
    band, an inverted class-1 'U' whose arms join only in an upper band, two diagonal-touching class-2 pixels."""
    h, w = 600, 500
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros((h, w), np.uint8)
    r = np.hypot(yy - 220, xx - 200)
    m[(r <= 130) & (r > 60)] = 1  # ring: rows 90..350, crosses the 100-row bands several times
    m[r <= 30] = 2  # inside the hole, not touching the ring
    m[380:560, 40:70] = 2  # U: two arms...
    m[380:560, 130:160] = 2
    m[520:560, 40:160] = 2  # ...joined at the bottom (rows 520-560, a later band than the arms' tops)
    m[20:60, 350:480] = 1  # inverted U: crossbar in the first band...
    m[20:300, 350:380] = 1  # ...arms going down through three more bands
    m[20:300, 450:480] = 1
    m[450, 300] = 2  # two pixels touching at a corner only: two regions
    m[451, 301] = 2
    return m


@pytest.fixture(scope="module")
def synthetic_tiff(tmp_path_factory) -> tuple[np.ndarray, Path]:
    m = synthetic_labels()
    path = write_pyramidal_tiff(m, tmp_path_factory.mktemp("geojson") / "labels.tif", mpp=0.5, tile=128, levels=2)
    return m, path


def test_exact_outlines_rasterise_to_the_mask_pixel_for_pixel(synthetic_tiff, tmp_path) -> None:
    mask, path = synthetic_tiff
    out = label_tiff_to_geojson(path, tmp_path / "labels.geojson", NAMES, COLORS, band_height=100, simplify_tolerance=0)
    features = json.loads(out.read_text())["features"]
    for k in (1, 2):
        assert np.array_equal(rasterize(features, k, mask.shape), mask == k), f"class {k}"


def test_one_feature_per_region_with_holes_and_merged_across_bands(synthetic_tiff, tmp_path) -> None:
    mask, path = synthetic_tiff
    out = label_tiff_to_geojson(path, tmp_path / "labels.geojson", NAMES, COLORS, band_height=100)
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    by_class = {k: [f for f in features if f["properties"]["label"] == k] for k in (1, 2)}
    # ring + inverted U; disc + U + two corner-touching pixels (merged across bands, never split by them)
    assert len(by_class[1]) == n_regions(mask == 1) == 2
    assert len(by_class[2]) == n_regions(mask == 2) == 4
    geoms = {k: [shapely.geometry.shape(f["geometry"]) for f in fs] for k, fs in by_class.items()}
    assert all(g.is_valid and g.geom_type == "Polygon" for gs in geoms.values() for g in gs)
    ring = max(geoms[1], key=lambda g: g.area)
    assert len(ring.interiors) == 1  # the hole
    assert ring.bounds == (70.0, 90.0, 331.0, 351.0)  # level-0 pixel corners of the ring's extent
    assert sum(len(g.interiors) for g in geoms[2]) == 0
    u_shape = max(geoms[2], key=lambda g: g.area)
    assert u_shape.bounds == (40.0, 380.0, 160.0, 560.0)
    assert u_shape.area == pytest.approx(((mask == 2)[370:570, 30:170]).sum(), rel=0.01)
    for k in (1, 2):
        assert iou(rasterize(features, k, mask.shape), mask == k) >= 0.99


def test_properties_are_quppath_annotations_with_the_given_classes(synthetic_tiff, tmp_path) -> None:
    _, path = synthetic_tiff
    out = label_tiff_to_geojson(path, tmp_path / "a.geojson", {1: "tissue", 2: "nuclei"}, {2: (1, 2, 3)})
    features = json.loads(out.read_text())["features"]
    seen = {}
    for f in features:
        assert f["type"] == "Feature" and f["properties"]["objectType"] == "annotation"
        seen[f["properties"]["label"]] = f["properties"]["classification"]
    assert seen == {1: {"name": "tissue", "color": list(DEFAULT_CLASS_COLORS[0])}, 2: {"name": "nuclei", "color": [1, 2, 3]}}
    assert len({f["id"] for f in features}) == len(features)
    # the same mask gives the same file (deterministic ids), and only the named labels are exported
    again = label_tiff_to_geojson(path, tmp_path / "b.geojson", {1: "tissue", 2: "nuclei"}, {2: (1, 2, 3)})
    assert again.read_text() == out.read_text()
    only_nuclei = json.loads(label_tiff_to_geojson(path, tmp_path / "c.geojson", {2: "nuclei"}).read_text())
    assert {f["properties"]["label"] for f in only_nuclei["features"]} == {2}


def test_written_atomically_and_bad_input_named(synthetic_tiff, tmp_path) -> None:
    _, path = synthetic_tiff
    label_tiff_to_geojson(path, tmp_path / "out" / "x.geojson", NAMES)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.geojson"]  # no temporary left behind
    with pytest.raises(ValueError, match="level=5"):
        label_tiff_to_geojson(path, tmp_path / "y.geojson", NAMES, level=5)
    with pytest.raises(ValueError, match=r"class_colors\[1\]"):
        label_tiff_to_geojson(path, tmp_path / "y.geojson", NAMES, {1: (0, 0, 300)})
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(Exception, match="corrupt.tif"):
        label_tiff_to_geojson(bad, tmp_path / "y.geojson", NAMES)
    rgb = write_pyramidal_tiff(np.zeros((64, 64, 3), np.uint8), tmp_path / "rgb.tif", mpp=0.5, tile=32)
    with pytest.raises(ValueError, match="single-channel integer label mask"):
        label_tiff_to_geojson(rgb, tmp_path / "y.geojson", NAMES)
    assert not (tmp_path / "y.geojson").exists()


def test_reduced_level_gives_level0_coordinates(synthetic_tiff, tmp_path) -> None:
    mask, path = synthetic_tiff
    out = label_tiff_to_geojson(path, tmp_path / "l1.geojson", NAMES, level=1, simplify_tolerance=0)
    features = json.loads(out.read_text())["features"]
    ring = max((shapely.geometry.shape(f["geometry"]) for f in features if f["properties"]["label"] == 1),
               key=lambda g: g.area)
    # level 1 is mask[::2, ::2]: its pixel (r, c) covers level-0 [2c, 2c + 2) x [2r, 2r + 2)
    assert ring.bounds == (70.0, 90.0, 332.0, 352.0)
    assert iou(rasterize(features, 1, mask.shape), mask == 1) >= 0.95


def test_array_version_matches_the_tiff_version(synthetic_tiff, tmp_path) -> None:
    import torch

    mask, path = synthetic_tiff
    from_file = json.loads(label_tiff_to_geojson(path, tmp_path / "f.geojson", NAMES, COLORS, band_height=100).read_text())
    from_array = label_array_to_geojson(torch.from_numpy(mask)[None], NAMES, COLORS, band_height=100)
    geom = lambda fc: sorted(json.dumps(f["geometry"]) for f in fc["features"])  # noqa: E731
    assert geom(from_array) == geom(from_file)
    with pytest.raises(ValueError, match="integer mask"):
        label_array_to_geojson(mask.astype(np.float32), NAMES)


def test_polygonize_rejects_non_consecutive_bands() -> None:
    band = np.ones((4, 4), np.uint8)
    with pytest.raises(ValueError, match="consecutive"):
        list(polygonize_labels([(0, band), (5, band)]))


def test_tiff_is_read_band_by_band(tmp_path) -> None:
    """A 3000 x 3000 mask (9 MB) polygonised with a peak far below its size: never decoded whole."""
    yy, xx = np.mgrid[:3000, :3000]
    mask = ((np.hypot(yy - 1500, xx - 1500) < 1200).astype(np.uint8) + (np.hypot(yy - 900, xx - 1600) < 300)).astype(np.uint8)
    path = write_pyramidal_tiff(mask, tmp_path / "big.tif", mpp=0.5, tile=256, levels=1)
    del yy, xx
    tracemalloc.start()
    try:
        out = label_tiff_to_geojson(path, tmp_path / "big.geojson", NAMES, band_height=128)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < mask.nbytes / 3, f"peak {peak / 1e6:.1f} MB for a {mask.nbytes / 1e6:.1f} MB mask"
    features = json.loads(out.read_text())["features"]
    assert [f["properties"]["label"] for f in features].count(1) == 1  # one disc with one hole, across 19 bands
    disc = next(shapely.geometry.shape(f["geometry"]) for f in features if f["properties"]["label"] == 1)
    assert len(disc.interiors) == 1
    assert disc.area == pytest.approx(float((mask == 1).sum()), rel=1e-3)


@pytest.mark.slow
def test_sample_slide_stain_labels_round_trip(tmp_path) -> None:
    """Real labels (the WSI bundle's stain rule on the cmu_slide sample): IoU >= 0.99 per class after simplifying,
    one valid feature per connected region."""
    import tifffile
    import zarr

    from monai_fovea.apps.foveation_wsi import stain_rule_labels
    from monai_fovea.data import samples

    with tifffile.TiffFile(samples.fetch("cmu_slide")["image"]) as tif:
        rgb = np.asarray(zarr.open(tif.series[0].aszarr(level=0), mode="r")[1000:1768, :1024])
    labels = stain_rule_labels(rgb, epithelium=False)
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    path = write_pyramidal_tiff(labels, tmp_path / "labels.tif", mpp=0.499, levels=2)
    out = label_tiff_to_geojson(path, tmp_path / "labels.geojson", NAMES, COLORS, band_height=256)
    features = json.loads(out.read_text())["features"]
    for k in (1, 2):
        fs = [f for f in features if f["properties"]["label"] == k]
        assert len(fs) == n_regions(labels == k), f"class {k}"
        assert all(shapely.geometry.shape(f["geometry"]).is_valid for f in fs)
        assert all(f["properties"]["classification"] == {"name": NAMES[k], "color": list(COLORS[k])} for f in fs)
        score = iou(rasterize(features, k, labels.shape), labels == k)
        assert score >= 0.99, f"class {k}: IoU {score:.4f}"


def test_min_area_drops_small_regions_only() -> None:
    mask = synthetic_labels()
    fc = label_array_to_geojson(mask, NAMES, band_height=100, min_area=2)
    nuclei = [shapely.geometry.shape(f["geometry"]) for f in fc["features"] if f["properties"]["label"] == 2]
    assert len(nuclei) == 2  # the two single pixels are gone; the disc and the U remain
    assert min(g.area for g in nuclei) > 2000
