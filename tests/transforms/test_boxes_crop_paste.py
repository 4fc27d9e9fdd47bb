"""CropResizeBoxes equals a per-box SpatialCrop + Resize loop; PasteBoxes round trips and fuses overlaps."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Resize, SpatialCrop

from monai_fovea.transforms import (
    CropResizeBoxes,
    CropResizeBoxesd,
    PasteBoxes,
    PasteBoxesd,
    RandComponentCrop,
    RandComponentCropd,
)


def _loop(img, boxes, size, mode):
    ndim = len(size)
    return torch.stack(
        [torch.as_tensor(Resize(size, mode=mode)(SpatialCrop(roi_start=b[:ndim], roi_end=b[ndim:])(img))) for b in boxes]
    )


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_crop_resize_2d_equals_loop(mode):
    img = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(0))
    boxes = np.array([[3, 5, 20, 30], [0, 0, 40, 50], [10, 12, 13, 14], [30, 40, 40, 50]])
    out = CropResizeBoxes((16, 12), mode=mode)(img, boxes)
    assert out.shape == (4, 3, 16, 12)
    assert torch.allclose(out, _loop(img, boxes, (16, 12), mode), atol=1e-5)


@pytest.mark.parametrize("mode", ["trilinear", "nearest"])
def test_crop_resize_3d_equals_loop(mode):
    img = torch.rand(2, 20, 22, 24, generator=torch.Generator().manual_seed(1))
    boxes = np.array([[3, 5, 2, 13, 20, 22], [0, 0, 0, 20, 22, 24]])
    out = CropResizeBoxes((7, 9, 5), mode=mode)(img, boxes)
    assert torch.allclose(out, _loop(img, boxes, (7, 9, 5), mode), atol=1e-5)


def test_crop_resize_label_dtype_and_metatensor_affine():
    lab = torch.randint(0, 3, (1, 16, 16))
    out = CropResizeBoxes((4, 4), mode="nearest")(lab, [[0, 0, 8, 8]])
    assert out.dtype == lab.dtype and out[0, 0].tolist() == lab[0, 0:8:2, 0:8:2].tolist()
    affine = torch.tensor([[2.0, 0, 0, 10], [0, 3.0, 0, -5], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    img = MetaTensor(torch.rand(1, 32, 32), affine=affine)
    box = [4, 6, 12, 22]
    crops = CropResizeBoxes((4, 8))(img, [box])
    ref = Resize((4, 8), mode="bilinear")(SpatialCrop(roi_start=box[:2], roi_end=box[2:])(img))  # MONAI's own affine update
    assert crops.affine.shape == (1, 4, 4)
    assert torch.allclose(crops.affine[0].double(), ref.affine.double(), atol=1e-6)
    with pytest.raises(ValueError, match="inside the image"):
        CropResizeBoxes((4, 4))(img, [[0, 0, 40, 4]])


def test_paste_round_trip_integer_scale():
    gen = torch.Generator().manual_seed(2)
    mask = (torch.rand(1, 32, 32, generator=gen) > 0.5).to(torch.uint8)
    boxes = np.array([[4, 4, 12, 12], [20, 2, 24, 10]])  # 8x8 and 4x8 -> 16x16: integer factors 2, 4 and 2
    crops = CropResizeBoxes((16, 16), mode="nearest")(mask, boxes)
    pasted = PasteBoxes((32, 32), reduction="or")(crops, boxes)
    expected = torch.zeros_like(mask, dtype=torch.bool)
    for b in boxes:
        expected[0, b[0] : b[2], b[1] : b[3]] = mask[0, b[0] : b[2], b[1] : b[3]] > 0
    assert pasted.dtype == torch.bool and torch.equal(pasted, expected)
    probs = CropResizeBoxes((16, 16), mode="nearest")(mask.float() * 0.7, boxes)
    back = PasteBoxes((32, 32), reduction="max", mode="nearest")(probs, boxes)
    assert torch.equal(back, expected.float() * 0.7)


def test_paste_round_trip_3d():
    mask = (torch.rand(1, 12, 12, 12, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    boxes = np.array([[0, 0, 0, 6, 6, 6], [6, 4, 2, 12, 10, 8]])
    crops = CropResizeBoxes((12, 12, 12), mode="nearest")(mask, boxes)
    pasted = PasteBoxes((12, 12, 12), reduction="or")(crops, boxes)
    expected = torch.zeros_like(mask, dtype=torch.bool)
    for b in boxes:
        expected[0, b[0] : b[3], b[1] : b[4], b[2] : b[5]] = mask[0, b[0] : b[3], b[1] : b[4], b[2] : b[5]] > 0
    assert torch.equal(pasted, expected)


@pytest.mark.parametrize(
    "reduction, overlap, a_only, b_only",
    [("or", 1.0, 1.0, 0.0), ("max", 0.8, 0.8, 0.2), ("mean", 0.5, 0.8, 0.2)],
)
def test_paste_overlaps(reduction, overlap, a_only, b_only):
    crops = torch.stack([torch.full((1, 2, 2), 0.8), torch.full((1, 2, 2), 0.2)])
    boxes = [[0, 0, 4, 4], [2, 2, 6, 6]]
    out = PasteBoxes((8, 8), reduction=reduction, mode="nearest", fill=-1.0)(crops, boxes).float()
    assert out[0, 2:4, 2:4].unique().tolist() == [pytest.approx(overlap)]
    assert out[0, 0:2, 0:2].unique().tolist() == [pytest.approx(a_only)]
    assert out[0, 4:6, 4:6].unique().tolist() == [pytest.approx(b_only)]
    assert out[0, 7, 7].item() == (0.0 if reduction == "or" else -1.0)


def test_metatensor_affine_round_trip_and_dict_twins():
    affine = torch.diag(torch.tensor([0.5, 0.25, 1.0, 1.0], dtype=torch.float64))
    affine[:2, 3] = torch.tensor([3.0, -2.0], dtype=torch.float64)
    img = MetaTensor(torch.rand(1, 24, 24), affine=affine)
    d = CropResizeBoxesd(["img"], "boxes", (12, 12))({"img": img, "boxes": np.array([[0, 0, 6, 6], [8, 8, 20, 20]])})
    d = PasteBoxesd("img", "boxes", image_size=(24, 24), reduction="max")(d)
    assert isinstance(d["img"], MetaTensor) and d["img"].shape == (1, 24, 24)
    assert torch.allclose(d["img"].affine.double(), affine)


def test_rand_component_crop_exact():
    lab = np.zeros((1, 32, 32), np.uint8)
    lab[0, 8:12, 8:12] = 1
    img = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    t = RandComponentCropd(["image", "label"], "label", (16, 16), max_shift=0)  # margin 16 // 8 = 2
    out = t({"image": img, "label": lab})
    assert out["box"].tolist() == [6, 6, 14, 14]
    expected = np.zeros((1, 16, 16), np.uint8)
    expected[0, 4:12, 4:12] = 1  # each of the 8 box pixels repeated twice
    assert np.array_equal(out["label"], expected) and out["label"].dtype == np.uint8
    ref = Resize((16, 16), mode="bilinear")(SpatialCrop(roi_start=(6, 6), roi_end=(14, 14))(img))
    assert np.allclose(out["image"], np.asarray(ref), atol=1e-5)


def test_rand_component_crop_empty_label_and_jitter():
    img = MetaTensor(torch.rand(1, 20, 30))
    crop, lab_crop, box = RandComponentCrop((10, 10))(img, torch.zeros(1, 20, 30))
    assert box.tolist() == [0, 0, 20, 30]  # whole image
    assert torch.allclose(crop.as_tensor(), torch.as_tensor(Resize((10, 10), mode="bilinear")(img.as_tensor())), atol=1e-5)
    assert torch.allclose(crop.affine[:2, :2].diag(), torch.tensor([2.0, 3.0], dtype=crop.affine.dtype))
    lab = torch.zeros(1, 64, 64)
    lab[0, 30:34, 40:44] = 1
    t = RandComponentCrop((16, 16), max_shift=16)
    t.set_random_state(0)
    boxes = np.array([t(torch.zeros(1, 64, 64), lab)[2] for _ in range(30)])
    sides = boxes[:, 2:] - boxes[:, :2]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all() and (sides[:, 0] == sides[:, 1]).all()
    assert len({tuple(b) for b in boxes}) > 5  # jitter does move the box
