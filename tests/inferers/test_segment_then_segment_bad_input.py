"""SegmentThenSegmentInferer on bad input: NaN/inf values (an error by default, or filled and masked out with
nan_policy="fill" while the rest of the image is segmented as without them), and constant images (an empty mask
and a warning, not whatever the networks make of a contrast-free input)."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.networks.nets import BasicUNet

from monai_fovea.apps.segment_then_segment import normalize_intensity
from monai_fovea.inferers import SegmentThenSegmentInferer
from monai_fovea.inferers.segment_then_segment import fill_non_finite

MODELS = Path(__file__).resolve().parents[2] / "bundles" / "segment_then_segment" / "models"


class ThresholdNet(torch.nn.Module):
    """logit = 10 * x - 5: foreground exactly where the image is > 0.5."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(10.0)
            self.conv.bias.fill_(-5.0)

    def forward(self, x):
        return self.conv(x)


def _squares() -> torch.Tensor:
    img = torch.full((1, 1, 64, 64), 0.1)
    for r, c in [(4, 4), (8, 40), (40, 12), (44, 44)]:
        img[0, 0, r : r + 10, c : c + 10] = 0.9
    return img


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def _bundle_nets():
    nets = []
    for name in ("coarse", "model"):
        net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(8, 16, 32, 64, 128, 8))
        net.load_state_dict(torch.load(MODELS / f"{name}.pt", map_location="cpu", weights_only=True))
        nets.append(net.eval())
    return nets


def test_nan_region_on_a_real_image_errors_by_default_and_fill_segments_the_rest(sample):
    image = tifffile.imread(sample("dsb2018_nuclei")["image"]).astype(np.float32)[None]
    clean = torch.as_tensor(normalize_intensity(image))[None]  # [1, 1, 512, 512]
    coarse, fine = _bundle_nets()
    kwargs = dict(coarse_size=None, coarse_scale=4, fine_size=64)  # as bundles/segment_then_segment inference.json
    ref = SegmentThenSegmentInferer(**kwargs)(clean, coarse, fine)
    assert ref.sum() > 20_000  # the clean run finds the nuclei (about a fifth of the image)

    holed = clean.clone()
    holed[..., :40, :40] = float("nan")
    with pytest.raises(ValueError, match=r"1600 non-finite values .*nan_policy='fill'"):
        SegmentThenSegmentInferer(**kwargs)(holed, coarse, fine)

    mask = SegmentThenSegmentInferer(**kwargs, nan_policy="fill")(holed, coarse, fine)
    outside = torch.ones_like(mask, dtype=torch.bool)
    outside[..., :40, :40] = False
    assert bool((mask[..., :40, :40] == 0).all())
    dice = _dice(mask[outside], ref[outside])
    print(f"DSC outside the NaN block, fill vs clean: {dice:.4f}")
    assert dice >= 0.95
    # why a NaN block must not reach the networks: 0.6% NaN pixels make most coarse probabilities NaN (NaN > 0.5 is
    # False everywhere: the empty mask the inferer used to return with no error)
    coarse_prob = SegmentThenSegmentInferer(**kwargs).coarse_probabilities(holed, coarse)
    assert float(torch.isnan(coarse_prob).float().mean()) > 0.5


def test_fill_replaces_nan_and_inf_by_the_finite_minimum_and_masks_them_out():
    img = _squares()
    bad = img.clone()
    bad[0, 0, 20:30, 20:30] = float("nan")
    bad[0, 0, 0, 60] = float("inf")
    bad[0, 0, 63, 0] = -float("inf")
    inferer = SegmentThenSegmentInferer(coarse_size=16, fine_size=16, nan_policy="fill")
    mask = inferer(bad, ThresholdNet(), ThresholdNet())
    expected = (img > 0.5).float()
    expected[(~torch.isfinite(bad))] = 0
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match=r"the image has 102 non-finite values"):
        SegmentThenSegmentInferer(coarse_size=16, fine_size=16)(bad, ThresholdNet(), ThresholdNet())
    # the coarse-only baseline follows the same policy
    coarse_only = inferer.coarse_mask(bad, ThresholdNet())
    assert bool((coarse_only[~torch.isfinite(bad)] == 0).all())
    with pytest.raises(ValueError, match="non-finite"):
        SegmentThenSegmentInferer(coarse_size=16, fine_size=16).coarse_mask(bad, ThresholdNet())


def test_fill_value_per_image_and_channel_or_given():
    x = torch.tensor([[[[0.25, float("nan")], [0.75, 0.5]], [[3.0, 2.0], [float("-inf"), 4.0]]]])
    filled, bad = fill_non_finite(x)
    assert filled[0, 0].tolist() == [[0.25, 0.25], [0.75, 0.5]]
    assert filled[0, 1].tolist() == [[3.0, 2.0], [2.0, 4.0]]
    assert bad[0, 0].tolist() == [[False, True], [True, False]]
    filled, _ = fill_non_finite(x, value=-1.0)
    assert filled[0, 0, 0, 1] == -1.0 and filled[0, 1, 1, 0] == -1.0
    same, none = fill_non_finite(torch.ones(1, 1, 2, 2), policy="error")
    assert none is None and torch.equal(same, torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="no finite value"):
        fill_non_finite(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        SegmentThenSegmentInferer(coarse_size=16, fine_size=16, nan_policy="ignore")


@pytest.mark.parametrize("value", [0.0, 0.7, -3.0])
def test_constant_image_gives_an_empty_mask_and_a_warning(value):
    img = torch.full((1, 1, 64, 64), value)
    inferer = SegmentThenSegmentInferer(coarse_size=16, fine_size=16, fallback="fine_on_whole")
    with pytest.warns(UserWarning, match=rf"image 0 of the batch is constant \(every value is {value:g}\)"):
        mask, boxes = inferer(img, ThresholdNet(), ThresholdNet(), return_boxes=True)
    # ThresholdNet alone would call all of a 0.7 image foreground (and fine_on_whole would run it on the image)
    assert mask.shape == (1, 1, 64, 64) and int(mask.sum()) == 0
    assert boxes[0].shape == (0, 4)


def test_a_constant_image_in_a_batch_does_not_change_the_others():
    img = torch.cat([_squares(), torch.full((1, 1, 64, 64), 0.9)])
    with pytest.warns(UserWarning, match="image 1 of the batch is constant"):
        mask = SegmentThenSegmentInferer(coarse_size=16, fine_size=16)(img, ThresholdNet(), ThresholdNet())
    assert torch.equal(mask[0], (_squares()[0] > 0.5).float())
    assert int(mask[1].sum()) == 0


@pytest.mark.parametrize("value", [0.0, 1234.0])
def test_constant_image_through_the_bundle_normalisation_is_zeros_then_an_empty_mask(value):
    # the only intensity normalisation of the package is apps.segment_then_segment.normalize_intensity (MONAI's
    # ScaleIntensityRangePercentiles): a constant image has equal percentiles and maps to zeros, not noise
    with pytest.warns(Warning, match="Divide by zero"):  # MONAI warns with the base Warning class
        normalised = normalize_intensity(np.full((1, 48, 40), value, np.float32))
    assert normalised.dtype == np.float32 and bool((normalised == 0).all())
    with pytest.warns(UserWarning, match="is constant"):
        mask = SegmentThenSegmentInferer(coarse_size=16, fine_size=16)(
            torch.as_tensor(normalised)[None], ThresholdNet(), ThresholdNet()
        )
    assert mask.shape == (1, 1, 48, 40) and int(mask.sum()) == 0
