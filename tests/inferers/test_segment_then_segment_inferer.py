"""SegmentThenSegmentInferer with real nets of known output: a 1x1 convolution that thresholds the image at 0.5."""

import pytest
import torch
from monai.data import MetaTensor
from monai.networks.nets import BasicUNet

from monai_fovea.inferers import SegmentThenSegmentInferer


class ThresholdNet(torch.nn.Module):
    """logit = 10 * x - 5: probability > 0.5 exactly where the image is > 0.5; counts its forward calls."""

    def __init__(self, spatial_dims: int = 2):
        super().__init__()
        self.conv = (torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d)(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(10.0)
            self.conv.bias.fill_(-5.0)
        self.calls, self.batch_sizes = 0, []

    def forward(self, x):
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        return self.conv(x)


def _image_2d():
    img = torch.zeros(1, 1, 64, 64)
    squares = [(0, 0), (8, 40), (24, 16), (40, 48), (52, 4)]  # 8x8 squares on a 4-px grid: 2x2 coarse pixels at 1/4
    for r, c in squares:
        img[0, 0, r : r + 8, c : c + 8] = 1.0
    return img, squares


def test_full_pipeline_exact_mask_and_boxes():
    img, squares = _image_2d()
    img[0, 0, 33:35, 33:35] = 1.0  # a 2x2 speck: at most 0.25 of a coarse pixel, invisible to the coarse net
    coarse, fine = ThresholdNet(), ThresholdNet()
    inferer = SegmentThenSegmentInferer(coarse_size=16, fine_size=16, sw_batch_size=4)  # margin 16 // 8 = 2
    mask, boxes = inferer(img, coarse, fine, return_boxes=True)
    expected = (img > 0.5).float()
    expected[0, 0, 33:35, 33:35] = 0  # missed by the coarse stage, so never cropped
    assert mask.shape == (1, 1, 64, 64)
    assert torch.equal(mask, expected)
    # each 8x8 square -> box of 8 + 2 * 2 = 12 px, shifted inside the image at the borders
    expected_boxes = sorted([[min(max(r - 2, 0), 52), min(max(c - 2, 0), 52), 0, 0] for r, c in squares])
    got = sorted(b[:2] + [0, 0] for b in boxes[0].tolist())
    assert got == expected_boxes
    assert ((boxes[0][:, 2:] - boxes[0][:, :2]) == 12).all()
    # 5 crops, batches of 4: the fine net ran twice, not once per crop
    assert fine.calls == 2 and fine.batch_sizes == [4, 1]
    assert coarse.calls == 1
    assert torch.equal(inferer.last_boxes[0], boxes[0])


def test_fine_net_called_once_per_batch():
    img, _ = _image_2d()
    fine = ThresholdNet()
    SegmentThenSegmentInferer(coarse_size=16, fine_size=16, sw_batch_size=16)(img, ThresholdNet(), fine)
    assert fine.calls == 1 and fine.batch_sizes == [5]


def test_empty_coarse_fallbacks():
    img = torch.zeros(1, 1, 64, 64)
    img[0, 0, 10:12, 20:22] = 1.0  # too small for the coarse stage
    empty = SegmentThenSegmentInferer(coarse_size=16, fine_size=64, fallback="empty")
    fine = ThresholdNet()
    mask, boxes = empty(img, ThresholdNet(), fine, return_boxes=True)
    assert mask.sum() == 0 and boxes[0].shape == (0, 4) and fine.calls == 0
    whole = SegmentThenSegmentInferer(coarse_size=16, fine_size=64, fallback="fine_on_whole")
    mask, boxes = whole(img, ThresholdNet(), fine, return_boxes=True)
    assert boxes[0].tolist() == [[0, 0, 64, 64]]
    assert torch.equal(mask, (img > 0.5).float())  # fine net at full size on the whole image


def test_3d_pipeline_exact():
    vol = torch.zeros(1, 1, 32, 32, 32)
    cubes = [(0, 0, 0), (12, 16, 20), (24, 4, 24)]
    for z, y, x in cubes:
        vol[0, 0, z : z + 8, y : y + 8, x : x + 8] = 1.0
    fine = ThresholdNet(3)
    inferer = SegmentThenSegmentInferer(coarse_size=8, fine_size=16, margin=4, sw_batch_size=8)
    mask, boxes = inferer(MetaTensor(vol, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))), ThresholdNet(3), fine,
                          return_boxes=True)
    assert isinstance(mask, MetaTensor) and torch.equal(mask.affine, torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])).to(mask.affine))
    assert torch.equal(mask.as_tensor(), (vol > 0.5).float())
    assert sorted(b[:3] for b in boxes[0].tolist()) == sorted([[min(max(v - 4, 0), 16) for v in c] for c in cubes])
    assert fine.calls == 1


def test_3d_coarse_sliding_window():
    vol = torch.zeros(1, 1, 32, 32, 32)
    vol[0, 0, 4:12, 20:28, 8:16] = 1.0
    inferer = SegmentThenSegmentInferer(coarse_size=16, fine_size=16, margin=4, coarse_roi_size=8)
    coarse = ThresholdNet(3)
    mask = inferer(vol, coarse, ThresholdNet(3))
    assert coarse.calls > 1  # the 16^3 coarse volume was processed by 8^3 windows
    assert torch.equal(mask, (vol > 0.5).float())


def test_any_monai_net_and_shapes():
    torch.manual_seed(0)
    coarse = BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 4, 8, 8, 16, 4)).eval()
    fine = BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 4, 8, 8, 16, 4)).eval()
    fine.load_state_dict(coarse.state_dict())  # fine initialised from coarse
    mask = SegmentThenSegmentInferer(32, 32, threshold=0.0, fallback="fine_on_whole")(torch.rand(2, 3, 96, 80), coarse, fine)
    assert mask.shape == (2, 1, 96, 80) and set(mask.unique().tolist()) <= {0.0, 1.0}


def test_bad_arguments():
    with pytest.raises(ValueError, match="fallback"):
        SegmentThenSegmentInferer(16, 16, fallback="whole")
    with pytest.raises(ValueError, match="inputs"):
        SegmentThenSegmentInferer(16, 16)(torch.zeros(64, 64), ThresholdNet(), ThresholdNet())


def test_coarse_scale_matches_coarse_size():
    img, _ = _image_2d()
    by_size = SegmentThenSegmentInferer(coarse_size=16, fine_size=16)
    by_scale = SegmentThenSegmentInferer(coarse_size=None, coarse_scale=4, fine_size=16)
    a, boxes_a = by_size(img, ThresholdNet(), ThresholdNet(), return_boxes=True)
    b, boxes_b = by_scale(img, ThresholdNet(), ThresholdNet(), return_boxes=True)
    assert torch.equal(a, b) and torch.equal(boxes_a[0], boxes_b[0])
    coarse = ThresholdNet()
    by_scale.coarse_probabilities(torch.zeros(1, 1, 128, 96), coarse)
    assert coarse.batch_sizes == [1]
    # coarse-only baseline: the 8x8 square at (24, 16) is a 2x2 block of p~1 at 1/4 scale; bilinear upsampling
    # gives its edge pixels 0.625 * 1 + 0.375 * 0.007 > 0.5, its corners 0.625^2 + ... < 0.5, the ring outside 0.375
    base = by_size.coarse_mask(img, ThresholdNet())
    expected = torch.ones(8, 8)
    expected[0, 0] = expected[0, 7] = expected[7, 0] = expected[7, 7] = 0
    assert base.shape == img.shape and torch.equal(base[0, 0, 24:32, 16:24], expected)
    assert base[0, 0, 23, 15:25].sum() == 0 and base[0, 0, 32, 15:25].sum() == 0
    assert base[0, 0, 23:33, 15].sum() == 0 and base[0, 0, 23:33, 24].sum() == 0
