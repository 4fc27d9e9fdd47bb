"""Foveation figures: exact overlay colours, APSM colour-map ends, and a figure with two panels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_fovea.visualize import LABEL_COLORS, apsm_figure, apsm_image, label_overlay


def test_label_overlay_exact_pixels():
    img = np.full((2, 3), 100, np.uint8)
    lab = np.array([[0, 1, 2], [0, 0, 1]])
    out = label_overlay(img, lab, alpha=0.5)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [100, 100, 100]  # background untouched
    expected = np.floor(0.5 * 100 + 0.5 * LABEL_COLORS[1].astype(float) + 0.5).astype(int)
    assert out[0, 1].tolist() == expected.tolist()
    # channel-first float image is min-max scaled; torch input accepted
    rgb = label_overlay(torch.tensor([[[0.0, 1.0]]]).repeat(3, 1, 1), torch.tensor([[0, 0]]))
    assert rgb[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    with pytest.raises(ValueError, match="label shape"):
        label_overlay(img, np.zeros((3, 3), int))


def test_apsm_image_uses_given_range():
    from matplotlib import colormaps

    out = apsm_image(np.array([[8.0, 20.0, 32.0, 64.0]]), vmin=8, vmax=32)
    ends = (colormaps["viridis"]([0.0, 1.0])[:, :3] * 255 + 0.5).astype(np.uint8)
    assert out[0, 0].tolist() == ends[0].tolist()
    assert out[0, 2].tolist() == ends[1].tolist() and out[0, 3].tolist() == ends[1].tolist()  # clipped
    with pytest.raises(ValueError, match="apsm"):
        apsm_image(np.zeros((2, 2, 2)))


def test_apsm_figure_has_image_and_map():
    fig = apsm_figure(np.random.rand(16, 16), np.random.rand(4, 4) * 24 + 8, label=np.zeros((16, 16), int),
                      patch_sizes=[8, 16, 32], title="t")
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2
    assert images[1].get_clim() == (8, 32)


def test_colour_bar_runs_from_vmax_at_the_top_to_vmin_at_the_bottom():
    from monai_fovea.visualize import add_colour_bar, apsm_image

    rgb = np.zeros((50, 30, 3), np.uint8)
    out = add_colour_bar(rgb, 16, 64)
    assert out.shape[0] == 50 and out.shape[1] > 30 and np.array_equal(out[:, :30], rgb)  # the image is untouched
    bar = out[:, 30 + 8 + 8]  # margin 8, middle of the 16-px bar
    assert np.array_equal(bar[0], apsm_image(np.array([[64.0]]), 16, 64)[0, 0])
    assert np.array_equal(bar[-1], apsm_image(np.array([[16.0]]), 16, 64)[0, 0])
    assert (out[:, 30:38] == 255).all()  # white margin between image and bar
    with pytest.raises(ValueError, match="rgb must be"):
        add_colour_bar(np.zeros((5, 5)), 0, 1)
