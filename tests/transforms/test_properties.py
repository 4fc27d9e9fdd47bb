"""Property tests (hypothesis) of the transforms: invariants that must hold for any sizes, boxes and images.

Foveation: the scale whose field of view equals ``output_size`` is the plain crop, bit for bit; the centre sample of
an odd ``output_size`` is the centre pixel at every scale; output shapes. Boxes: ``ExpandBoxes`` stays inside the
image, squares, respects ``min_size`` and covers the scaled box; ``ComponentBoxes`` boxes are the tight boxes of
their components; ``CropResizeBoxes`` at scale 1 is the crop bit for bit and ``PasteBoxes`` of those crops restores
the image. Sparse: ``ToSparse`` → ``SparseToDense`` is exact.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor
from scipy import ndimage

import monai_fovea.transforms.foveation.strided as fov_strided
from monai_fovea.transforms import (
    ComponentBoxes,
    CropResizeBoxes,
    ExpandBoxes,
    MultiScalePatches,
    PasteBoxes,
    SparseToDense,
    ToSparse,
)

SETTINGS = settings(max_examples=40, deadline=None)


def _image(seed: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values with no structure (every pixel differs), so a shifted or mixed read shows."""
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return (torch.rand(shape, generator=g, dtype=torch.float64) * 200 - 100).to(dtype)
    return torch.randint(-1000, 1000, shape, generator=g).to(dtype)


@st.composite
def _spatial(draw, ndim: int | None = None, lo: int = 1, hi: int | None = None) -> tuple[int, ...]:
    ndim = draw(st.sampled_from([2, 3])) if ndim is None else ndim
    hi = hi if hi is not None else (24 if ndim == 2 else 10)
    return tuple(draw(st.integers(lo, hi)) for _ in range(ndim))


# ---------------------------------------------------------------- foveation


@SETTINGS
@given(data=st.data(), fast_path=st.booleans())
def test_multiscale_patch_of_output_size_is_the_plain_crop(data, fast_path):
    ndim = data.draw(st.sampled_from([2, 3]))
    spatial = data.draw(_spatial(ndim, lo=1, hi=20 if ndim == 2 else 9))
    out = data.draw(_spatial(ndim, lo=1, hi=7 if ndim == 2 else 4))
    channels = data.draw(st.integers(1, 3))
    n = data.draw(st.integers(1, 5))
    # centres anywhere, also off the image: the crop then reads zeros there
    centers = np.asarray([[data.draw(st.integers(-3, s + 2)) for s in spatial] for _ in range(n)])
    bigger = [tuple(o * f + e for o in out) for f, e in ((2, 0), (3, 1))]
    sizes = [out, *bigger]
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.int32]))
    img = _image(data.draw(st.integers(0, 2**16)), (channels, *spatial), dtype)

    old = fov_strided._FAST_PATH_MIN_ELEMENTS
    fov_strided._FAST_PATH_MIN_ELEMENTS = 0 if fast_path else 1 << 60
    try:
        patches = MultiScalePatches(sizes, out, padding_mode="zeros")(img, centers)
    finally:
        fov_strided._FAST_PATH_MIN_ELEMENTS = old

    assert patches.shape == (n, len(sizes), channels, *out)
    pad = max(out) + 4
    padded = torch.nn.functional.pad(img.to(patches.dtype), [pad] * (2 * ndim))
    for i, c in enumerate(centers):
        region = (slice(None), *[slice(pad + int(ci) - o // 2, pad + int(ci) - o // 2 + o) for ci, o in zip(c, out)])
        assert torch.equal(patches[i, 0], padded[region])  # bit for bit, not close


@SETTINGS
@given(data=st.data())
def test_centre_sample_of_odd_output_is_the_centre_pixel_at_every_scale(data):
    ndim = data.draw(st.sampled_from([2, 3]))
    spatial = data.draw(_spatial(ndim, lo=1, hi=30 if ndim == 2 else 10))
    out = tuple(2 * data.draw(st.integers(0, 3)) + 1 for _ in range(ndim))
    sizes = sorted({tuple(o + data.draw(st.integers(0, 25)) for o in out) for _ in range(3)})
    centers = np.asarray([[data.draw(st.integers(0, s - 1)) for s in spatial] for _ in range(3)])
    img = _image(data.draw(st.integers(0, 2**16)), (2, *spatial))
    img[img > 50] = 0  # exact zeros next to non-zero neighbours: any mixing in of a neighbour shows
    patches = MultiScalePatches(sizes, out, antialias=False)(img, centers)
    mid = tuple(o // 2 for o in out)
    for i, c in enumerate(centers):
        expected = img[(slice(None), *[int(v) for v in c])]
        for d in range(len(sizes)):
            assert torch.equal(patches[(i, d, slice(None), *mid)], expected)


@SETTINGS
@given(data=st.data())
def test_multiscale_patches_shape_and_dtype_for_any_sizes(data):
    ndim = data.draw(st.sampled_from([2, 3]))
    spatial = data.draw(_spatial(ndim, lo=1, hi=16 if ndim == 2 else 8))
    out = data.draw(_spatial(ndim, lo=1, hi=6 if ndim == 2 else 3))
    sizes = [data.draw(_spatial(ndim, lo=1, hi=40)) for _ in range(data.draw(st.integers(1, 3)))]
    n = data.draw(st.integers(0, 4))
    centers = np.asarray([[data.draw(st.integers(-5, s + 5)) for s in spatial] for _ in range(n)]).reshape(n, ndim)
    mode = data.draw(st.sampled_from(["zeros", "border", "reflect", "symmetric"]))
    img = np.asarray(_image(0, (1, *spatial)))
    patches = MultiScalePatches(sizes, out, padding_mode=mode)(img, centers)
    assert isinstance(patches, np.ndarray)
    assert patches.shape == (n, len(sizes), 1, *out)
    assert patches.dtype == np.float32
    # every sample is a convex combination of image pixels (or the zero padding): never outside their range
    lo, hi = min(float(img.min()), 0.0), max(float(img.max()), 0.0)
    assert np.all(patches >= lo - 1e-3) and np.all(patches <= hi + 1e-3)


# ---------------------------------------------------------------- boxes


@st.composite
def _boxes_in(draw, spatial: tuple[int, ...], k_max: int = 4, size: tuple[int, ...] | None = None) -> np.ndarray:
    """``[K, 2 * ndim]`` boxes inside ``spatial``; all of ``size`` when given."""
    k = draw(st.integers(1, k_max))
    boxes = []
    for _ in range(k):
        if size is None:
            starts = [draw(st.integers(0, s - 1)) for s in spatial]
            ends = [draw(st.integers(a + 1, s)) for a, s in zip(starts, spatial)]
        else:
            starts = [draw(st.integers(0, s - L)) for s, L in zip(spatial, size)]
            ends = [a + L for a, L in zip(starts, size)]
        boxes.append(starts + ends)
    return np.asarray(boxes, np.int64)


@SETTINGS
@given(data=st.data())
def test_expand_boxes_inside_square_min_size_and_covering(data):
    ndim = data.draw(st.sampled_from([2, 3]))
    image = data.draw(_spatial(ndim, lo=1, hi=60))
    scale = data.draw(st.sampled_from([1, 2, 3, 4, 2.5]))
    coarse = tuple(max(1, int(s // scale)) for s in image)
    boxes = data.draw(_boxes_in(coarse))
    margin = data.draw(st.integers(0, 6))
    square = data.draw(st.booleans())
    min_size = data.draw(st.integers(1, 12))
    out, keep = ExpandBoxes(scale, margin, square, min_size, image, return_indices=True)(boxes)

    size = out[:, ndim:] - out[:, :ndim]
    assert (out[:, :ndim] >= 0).all() and (out[:, ndim:] <= np.asarray(image)).all()
    assert (size >= min_size).all()
    for box, side, k in zip(out, size, keep):
        # the box covers its component's scaled box (clipped to the image)
        start = np.floor(boxes[k, :ndim] * scale + 1e-9).astype(int)
        end = np.minimum(np.ceil(boxes[k, ndim:] * scale - 1e-9).astype(int), image)
        assert (box[:ndim] <= start).all() and (box[ndim:] >= end).all()
        if square:
            # equal sides, except those clipped to a shorter image axis
            unclipped = [int(v) for v, s in zip(side, image) if v < s]
            assert len(set(unclipped)) <= 1
            assert all(s <= unclipped[0] for v, s in zip(side, image) if v == s) if unclipped else True
    # a box is dropped only for a side below min_size: with min_size=1 every box is kept
    all_kept, keep1 = ExpandBoxes(scale, margin, square, 1, image, return_indices=True)(boxes)
    assert keep1.tolist() == list(range(len(boxes)))
    assert set(keep.tolist()) == {i for i, b in enumerate(all_kept) if ((b[ndim:] - b[:ndim]) >= min_size).all()}


@SETTINGS
@given(data=st.data())
def test_component_boxes_are_the_tight_boxes_of_their_components(data):
    ndim = data.draw(st.sampled_from([2, 3]))
    spatial = data.draw(_spatial(ndim, lo=1, hi=14 if ndim == 2 else 7))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    mask = rng.choice(3, size=(1, *spatial), p=[0.6, 0.25, 0.15]).astype(np.uint8)
    min_size = data.draw(st.integers(1, 4))
    boxes, classes = ComponentBoxes(min_size=min_size)(mask)

    structure = ndimage.generate_binary_structure(ndim, ndim)
    expected = []
    for value in (1, 2):
        labels, n = ndimage.label(mask[0] == value, structure=structure)
        for i in range(1, n + 1):
            comp = labels == i
            if comp.sum() < min_size:
                continue
            where = np.nonzero(comp)
            box = [int(w.min()) for w in where] + [int(w.max()) + 1 for w in where]
            expected.append((value, box))
    got = sorted(zip(classes.tolist(), boxes.tolist()))
    assert got == sorted(expected)
    for value, box in got:
        region = mask[(0, *[slice(a, b) for a, b in zip(box[:ndim], box[ndim:])])] == value
        for axis in range(ndim):  # tight: every face of the box touches the class
            assert region.take(0, axis=axis).any() and region.take(-1, axis=axis).any()


@SETTINGS
@given(data=st.data())
def test_crop_resize_at_scale_one_is_the_crop_bit_for_bit(data):
    ndim = data.draw(st.sampled_from([2, 3]))
    spatial = data.draw(_spatial(ndim, lo=2, hi=40 if ndim == 2 else 12))
    size = tuple(data.draw(st.integers(1, s)) for s in spatial)
    boxes = data.draw(_boxes_in(spatial, size=size))
    # other boxes in the same call go through the interpolating path; the scale-1 ones must stay exact
    others = data.draw(_boxes_in(spatial)) if data.draw(st.booleans()) else np.zeros((0, 2 * ndim), np.int64)
    order = data.draw(st.permutations(range(len(boxes) + len(others))))
    all_boxes = np.concatenate([boxes, others])[list(order)]
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8]))
    img = _image(data.draw(st.integers(0, 2**16)), (2, *spatial), dtype)
    if dtype == torch.uint8:
        img = _image(1, (2, *spatial), torch.int64).abs().clamp(max=255).to(torch.uint8)

    crops = CropResizeBoxes(size)(img, all_boxes)

    expected_dtype = dtype if dtype.is_floating_point else torch.float32
    assert crops.dtype == expected_dtype and crops.shape == (len(all_boxes), 2, *size)
    for i, box in enumerate(all_boxes):
        if tuple(box[ndim:] - box[:ndim]) == size:
            region = (slice(None), *[slice(a, b) for a, b in zip(box[:ndim], box[ndim:])])
            assert torch.equal(crops[i], img[region].to(expected_dtype))


@SETTINGS
@given(data=st.data())
def test_paste_of_scale_one_crops_restores_the_image(data):
    ndim = data.draw(st.sampled_from([2, 3]))
    spatial = data.draw(_spatial(ndim, lo=2, hi=40 if ndim == 2 else 12))
    size = tuple(data.draw(st.integers(1, s)) for s in spatial)
    boxes = data.draw(_boxes_in(spatial, k_max=6, size=size))  # may overlap
    img = _image(data.draw(st.integers(0, 2**16)), (2, *spatial))
    crops = CropResizeBoxes(size)(img, boxes)

    fill = -1234.5
    pasted = PasteBoxes(spatial, reduction="max", fill=fill)(crops, boxes)
    covered = torch.zeros(spatial, dtype=torch.bool)
    for box in boxes:
        covered[tuple(slice(a, b) for a, b in zip(box[:ndim], box[ndim:]))] = True
    assert torch.equal(pasted[:, covered], img[:, covered])
    assert bool((pasted[:, ~covered] == fill).all())

    # the same through MetaTensors: the pasted map gets the image's affine back
    affine = torch.diag(torch.tensor([0.5, 2.0, 3.0, 1.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor([10.0, -4.0, 7.0])
    meta_crops = CropResizeBoxes(size)(MetaTensor(img, affine=affine), boxes)
    meta_pasted = PasteBoxes(spatial, reduction="max", fill=fill)(meta_crops, boxes)
    assert torch.equal(meta_pasted.as_tensor()[:, covered], img[:, covered])
    assert torch.allclose(meta_pasted.affine, affine, atol=1e-12)


# ---------------------------------------------------------------- sparse


@SETTINGS
@given(data=st.data())
def test_to_sparse_then_dense_round_trip_is_exact(data):
    ndim = data.draw(st.sampled_from([2, 3]))
    spatial = data.draw(_spatial(ndim, lo=1, hi=20 if ndim == 2 else 9))
    channels = data.draw(st.integers(1, 3))
    threshold = data.draw(st.sampled_from([0.0, -10.0, 25.5]))
    img = _image(data.draw(st.integers(0, 2**16)), (channels, *spatial))
    img[img.abs() < 40] = 0.0  # many exactly-empty voxels
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, 3] = torch.tensor([1.0, 2.0, 3.0])

    vol = ToSparse(threshold, features="intensity")(MetaTensor(img, affine=affine))
    active = (img > threshold).any(0)
    assert vol.num_active == int(active.sum())
    background = data.draw(st.sampled_from([0.0, -20.0]))
    dense = SparseToDense(background)(vol)
    expected = torch.where(active[None], img, torch.full_like(img, background))
    assert torch.equal(dense.as_tensor(), expected)
    assert torch.equal(dense.affine, affine)

    occupancy = SparseToDense()(ToSparse(threshold)(img))
    assert torch.equal(occupancy.as_tensor(), active[None].float())


def test_empty_volume_round_trips_to_background():
    vol = ToSparse(features="intensity")(torch.zeros(2, 4, 5, 6))
    assert vol.num_active == 0
    dense = SparseToDense(background=-3.0)(vol)
    assert dense.shape == (2, 4, 5, 6) and bool((dense == -3.0).all())
