"""Skull extraction from T1 MRI: concentric-sphere phantoms (exact layers known) and the real ``mri_ch2`` head."""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from monai_fovea.data.skull_extraction import extract_skull_t1, load_mri_skull

FULL = np.ones((3, 3, 3), bool)


def _phantom(n: int = 72):
    """T1-like concentric spheres: brain r<20 (80), CSF 20-22 (15), bone 22-27 (10), scalp 27-32 (120), air 0."""
    g = np.indices((n, n, n)) - (n - 1) / 2
    r = np.sqrt((g**2).sum(0))
    t1 = np.select([r < 20, r < 22, r < 27, r < 32], [80.0, 15.0, 10.0, 120.0], 0.0)
    return t1, r


def _dsc(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("given_brain", [True, False])
def test_phantom_skull_is_the_bone_shell(given_brain):
    t1, r = _phantom()
    bone = (r >= 22) & (r < 27)
    skull = extract_skull_t1(t1, brain=(r < 20) if given_brain else None, brain_margin_mm=2.0)
    assert skull.dtype == bool and skull.shape == t1.shape
    assert _dsc(skull, bone) > 0.9
    assert not (skull & (r < 20)).any()  # no brain
    assert not (skull & (r >= 27)).any()  # no scalp, no air
    assert ndimage.label(skull, FULL)[1] == 1


def test_margin_decides_whether_csf_counts_as_skull():
    # T1 cannot tell CSF from bone: with no margin the dark CSF shell 20-22 joins the skull
    t1, r = _phantom()
    skull = extract_skull_t1(t1, brain=r < 20, brain_margin_mm=0.0)
    csf = (r >= 20) & (r < 22)
    assert (skull & csf).sum() > 0.8 * csf.sum()
    assert _dsc(skull, (r >= 20) & (r < 27)) > 0.9


def test_intensity_scale_does_not_matter():
    t1, r = _phantom(64)
    a = extract_skull_t1(t1, brain=r < 20, brain_margin_mm=2.0)
    b = extract_skull_t1(3.0 * t1 + 0.0, brain=r < 20, brain_margin_mm=2.0)
    assert np.array_equal(a, b)


def test_band_limits_the_distance_from_the_brain():
    t1, r = _phantom()
    brain = r < 20
    wide = extract_skull_t1(t1, brain=brain, brain_margin_mm=2.0, band_mm=12.0)
    # brain + 2 mm margin reaches r=22; a 3 mm band stops at r=25, so the outer bone (25-27) is left out
    narrow = extract_skull_t1(t1, brain=brain, brain_margin_mm=2.0, band_mm=3.0, min_hole_voxels=0, bone_closing_mm=0)
    assert narrow.sum() < 0.75 * wide.sum()
    assert not (narrow & (r >= 25.5)).any()


def test_spacing_is_in_mm():
    # the phantom sampled every 2 mm along the last axis: the 2 mm margin is one voxel along it, not two
    n = 72
    g = np.mgrid[:n, :n, : n // 2].astype(float)
    g[0] -= 35.5
    g[1] -= 35.5
    g[2] = 2 * g[2] - 35.5
    r = np.sqrt((g**2).sum(0))
    t1 = np.select([r < 20, r < 22, r < 27, r < 32], [80.0, 15.0, 10.0, 120.0], 0.0)
    bone = (r >= 22) & (r < 27)
    right = extract_skull_t1(t1, brain=r < 20, brain_margin_mm=2.0, spacing=(1.0, 1.0, 2.0))
    wrong = extract_skull_t1(t1, brain=r < 20, brain_margin_mm=2.0)  # 1 mm assumed: 4 mm margin along z
    assert _dsc(right, bone) > 0.95
    # the column through the centre crosses the bone at z = -25.5, -23.5 and 22.5, 24.5, 26.5 mm
    assert (right[35, 35] & bone[35, 35]).sum() == 5
    assert (wrong[35, 35] & bone[35, 35]).sum() == 3


def test_bad_inputs_name_the_argument():
    t1, r = _phantom(40)
    with pytest.raises(ValueError, match="t1 must be a 3D"):
        extract_skull_t1(t1[0])
    with pytest.raises(ValueError, match="brain must have the shape"):
        extract_skull_t1(t1, brain=(r < 10)[:-1])
    with pytest.raises(ValueError, match="brain mask is empty"):
        extract_skull_t1(t1, brain=np.zeros_like(t1, bool))
    with pytest.raises(ValueError, match="empty head mask"):
        extract_skull_t1(np.zeros((20, 20, 20)))
    with pytest.raises(ValueError, match="empty head mask.*head_threshold"):
        extract_skull_t1(t1, head_threshold=500.0)
    with pytest.raises(ValueError, match="spacing"):
        extract_skull_t1(t1, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="dark_fraction"):
        extract_skull_t1(t1, dark_fraction=1.5)


@pytest.fixture(scope="module")
def mri_skull(sample):
    files = sample("mri_ch2")
    skull, affine = load_mri_skull()
    t1 = np.asarray(nib.load(str(files["image"])).dataobj)
    aal = np.asarray(nib.load(str(files["aal"])).dataobj) > 0
    return skull, affine, t1, aal


def test_real_mri_skull_structure(mri_skull):
    skull, affine, t1, aal = mri_skull
    assert skull.dtype == bool and skull.shape == t1.shape == (181, 217, 181)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.diag(affine)[:3], 1.0)
    assert ndimage.label(skull, FULL)[1] == 1
    # measured 431,760 voxels (1 mm^3 each); the CT skull of ct_head, face and mandible included, is ~595 cm^3
    assert 350_000 < skull.sum() < 520_000
    assert not (skull & aal).any()
    # the skull is dark in T1 (bone has no signal), the scalp it must not include is bright
    assert np.median(t1[skull]) < 30 < np.median(t1[aal])
    # the top of the skull lies below the top of the head (scalp above it), above the brain's top
    top_skull = np.nonzero(skull.any((0, 1)))[0].max()
    top_brain = np.nonzero(aal.any((0, 1)))[0].max()
    top_head = np.nonzero((t1 > 0).any((0, 1)))[0].max()
    assert top_brain < top_skull < top_head - 5


def test_real_mri_skull_covers_the_vault(mri_skull):
    skull, _, t1, aal = mri_skull
    c = np.array(ndimage.center_of_mass(aal))
    # 400 rays from the brain's centroid, spread evenly over the upper hemisphere (third axis = superior): each
    # must meet skull before air (t1 == 0) or the edge of the volume. Measured: all 400 do; the ray straight
    # down does not (it leaves through the foramen magnum, as it should).
    n = 400
    i = np.arange(n) + 0.5
    z = i / n
    phi = np.pi * (1 + 5**0.5) * i
    dirs = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], 1)
    steps = np.arange(0, 150, 0.5)
    pts = np.round(c[None, None] + steps[None, :, None] * dirs[:, None]).astype(int)  # [ray, step, 3]
    inside = ((pts >= 0) & (pts < np.array(t1.shape))).all(-1)
    p = np.clip(pts, 0, np.array(t1.shape) - 1)
    is_skull = skull[p[..., 0], p[..., 1], p[..., 2]] & inside
    left_head = (t1[p[..., 0], p[..., 1], p[..., 2]] == 0) | ~inside
    first_skull = np.where(is_skull.any(1), is_skull.argmax(1), len(steps))
    first_out = np.where(left_head.any(1), left_head.argmax(1), len(steps))
    assert (first_skull < first_out).mean() > 0.9
    # and the skull is met 60-110 mm from the centroid (a head, not the brain's edge or the scalp)
    dist = steps[first_skull[first_skull < len(steps)]]
    assert 60 <= dist.min() and dist.max() <= 110
