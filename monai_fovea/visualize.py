"""Figures shared by all bundles and tutorials (APSM maps, label overlays), one section per strategy.

Functions return numpy ``uint8`` RGB arrays (write them with ``monai_fovea.data.io.write_png``); the optional
matplotlib figures import matplotlib lazily so that the package imports without it.
"""

from __future__ import annotations

import numpy as np

# --- foveation ---
# Distinct colours for up to 10 classes (class 0 is drawn transparent in overlays); more classes cycle.
LABEL_COLORS = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60]],
    dtype=np.uint8,
)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _to_rgb_uint8(image) -> np.ndarray:
    """``[H, W]``, ``[H, W, C]`` or channel-first ``[C, H, W]`` (C in 1, 3) → ``[H, W, 3]`` uint8, min-max scaled
    unless already uint8."""
    img = _to_numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(f"image must be a 2D grey or RGB image, got shape {img.shape}.")
    if img.dtype != np.uint8:
        lo, hi = float(img.min()), float(img.max())
        img = np.clip((img - lo) / (hi - lo if hi > lo else 1.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img


def label_overlay(image, label, alpha: float = 0.5, colors: np.ndarray | None = None) -> np.ndarray:
    """Blend class colours over an image: ``[H, W, 3]`` uint8. Class 0 (background) is left unchanged.

    Args:
        image: 2D grey or RGB image (``[H, W]``, ``[H, W, 3]`` or ``[C, H, W]``).
        label: ``[H, W]`` (or ``[1, H, W]``) class indices.
        alpha: opacity of the colours.
        colors: ``[K, 3]`` uint8 colours (default ``LABEL_COLORS``, cycled).

    Example:
        >>> label_overlay(np.zeros((2, 2)), np.array([[0, 1], [0, 0]]), alpha=1.0)[0, 1].tolist()
        [230, 25, 75]
    """
    rgb = _to_rgb_uint8(image).astype(np.float32)
    lab = _to_numpy(label)
    lab = lab[0] if lab.ndim == 3 and lab.shape[0] == 1 else lab
    if lab.shape != rgb.shape[:2]:
        raise ValueError(f"label shape {lab.shape} must match the image's spatial shape {rgb.shape[:2]}.")
    pal = LABEL_COLORS if colors is None else np.asarray(colors, dtype=np.uint8)
    lab = lab.astype(np.int64)
    col = pal[lab % len(pal)].astype(np.float32)
    fg = (lab > 0)[..., None]
    out = np.where(fg, (1.0 - alpha) * rgb + alpha * col, rgb)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def apsm_image(apsm, vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis") -> np.ndarray:
    """Colour-map an APSM (average patch size map, ``[h, w]`` or ``[1, h, w]``) to ``[h, w, 3]`` uint8.

    ``vmin``/``vmax`` default to the map's range; pass the smallest and largest patch size to compare maps.

    Example:
        >>> apsm_image(np.array([[8.0, 32.0]]), vmin=8, vmax=32).shape
        (1, 2, 3)
    """
    from matplotlib import colormaps

    a = _to_numpy(apsm).astype(np.float64)
    a = a[0] if a.ndim == 3 and a.shape[0] == 1 else a
    if a.ndim != 2:
        raise ValueError(f"apsm must be a 2D map, got shape {a.shape}.")
    lo = float(a.min()) if vmin is None else float(vmin)
    hi = float(a.max()) if vmax is None else float(vmax)
    norm = np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    return (colormaps[cmap](norm)[..., :3] * 255.0 + 0.5).astype(np.uint8)


def add_colour_bar(rgb: np.ndarray, vmin: float, vmax: float, cmap: str = "viridis", unit: str = "px",
                   bar_width: int = 16, margin: int = 8) -> np.ndarray:
    """``rgb`` ``[h, w, 3]`` uint8 with a legend appended on its right: a vertical colour bar (``vmax`` at the top,
    ``vmin`` at the bottom, the colours :func:`apsm_image` uses) labelled with both values, on white.

    For images written straight to PNG (e.g. the whole-slide APSM), where a reader needs the scale to read them.

    Example:
        >>> add_colour_bar(np.zeros((64, 40, 3), np.uint8), 16, 64).shape
        (64, 107, 3)
    """
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    rgb = np.asarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be [h, w, 3] uint8, got shape {rgb.shape}.")
    h = rgb.shape[0]
    text_width = 7 * max(len(f"{vmax:g} {unit}"), len(f"{vmin:g} {unit}"))  # the default PIL font is ~6 px wide
    legend = np.full((h, 2 * margin + bar_width + text_width, 3), 255, np.uint8)
    levels = np.linspace(1.0, 0.0, h)[:, None]  # top row = vmax
    bar = (colormaps[cmap](np.repeat(levels, bar_width, 1))[..., :3] * 255.0 + 0.5).astype(np.uint8)
    legend[:, margin : margin + bar_width] = bar
    image = Image.fromarray(legend)
    draw = ImageDraw.Draw(image)
    x = 2 * margin + bar_width - margin // 2
    draw.text((x, 0), f"{vmax:g} {unit}", fill=(0, 0, 0))
    draw.text((x, max(h - 11, 0)), f"{vmin:g} {unit}", fill=(0, 0, 0))
    return np.concatenate([rgb, np.asarray(image)], axis=1)


def apsm_figure(image, apsm, label=None, patch_sizes=None, title: str | None = None):
    """A matplotlib figure: the image (with the label overlay when given) beside its APSM (with a colour bar in
    pixels), as the paper's Fig. 4. Returns the ``Figure``; save it with ``fig.savefig(path)``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    a = _to_numpy(apsm).astype(np.float64)
    a = a[0] if a.ndim == 3 and a.shape[0] == 1 else a
    vmin, vmax = (min(patch_sizes), max(patch_sizes)) if patch_sizes else (None, None)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    shown = label_overlay(image, label) if label is not None else _to_rgb_uint8(image)
    axes[0].imshow(shown)
    axes[0].set_title("image" + (" + labels" if label is not None else ""))
    im = axes[1].imshow(a, cmap="viridis", vmin=vmin, vmax=vmax)
    axes[1].set_title("APSM (average patch size, px)")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig



# --- segment-then-segment ---

# --- sparse ---
