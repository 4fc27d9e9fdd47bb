"""Array transforms for foveation: multi-scale patches and foveation centres (grid and random)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Randomizable, Transform
from monai.utils import TransformBackends

from .functional import as_size_tuple, multiscale_patches, patch_affines

__all__ = ["MultiScalePatches", "FoveationCenters", "RandFoveationCenters", "grid_centers"]


def _spatial_shape(img_or_shape: NdarrayOrTensor | Sequence[int], spatial_dims: int | None) -> tuple[int, ...]:
    """Spatial shape of a channel-first image, or the shape itself when a sequence of ints is given."""
    if isinstance(img_or_shape, (np.ndarray, torch.Tensor)):
        shape = tuple(int(s) for s in img_or_shape.shape[1:])
    else:
        shape = tuple(int(s) for s in img_or_shape)
    if spatial_dims is not None and len(shape) != spatial_dims:
        raise ValueError(f"expected a {spatial_dims}D spatial shape, got {shape}.")
    if len(shape) not in (2, 3):
        raise ValueError(f"foveation supports 2D and 3D images, got spatial shape {shape}.")
    return shape


def grid_centers(spatial_shape: Sequence[int], stride: int | Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Centres of the cells of a regular grid of pitch ``stride`` over ``spatial_shape``.

    Cell ``i`` (per axis) covers pixels ``[i * stride, (i + 1) * stride)`` and has centre ``i * stride + stride // 2``;
    the grid has ``ceil(size / stride)`` cells per axis (the last one may be partial). Returns the centres
    ``[N, ndim]`` (int64, C order over the grid) and the grid shape. Cell ``i`` is pixel ``i`` of the low-resolution
    map the foveation head sees (``FoveatedSegmenter.lowres``).
    """
    shape = tuple(int(s) for s in spatial_shape)
    st = as_size_tuple(stride, len(shape), "stride")
    grid = tuple(-(-s // t) for s, t in zip(shape, st))
    axes = [torch.arange(g, dtype=torch.int64) * t + t // 2 for g, t in zip(grid, st)]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1), grid


class MultiScalePatches(Transform):
    """D concentric patches of increasing field of view (FoV) per centre, all resampled to ``output_size``.

    Vectorised over all centres and scales; antialiased through a mip-map built once per call (see
    :func:`monai_fovea.transforms.foveation.functional.multiscale_patches` for the geometry). The scale whose FoV
    equals ``output_size`` is exactly ``SpatialCrop(roi_center=c, roi_size=output_size)``.

    Args:
        patch_sizes: D fields of view (int or per axis), ascending.
        output_size: pixels per patch (int or per axis).
        padding_mode: ``"zeros"``, ``"constant"``, ``"border"``, ``"reflect"`` or ``"symmetric"``.
        antialias: sample downsampling scales from the nearest mip-map level.
        value: fill value for ``padding_mode="constant"``.
        mode: ``"bilinear"`` for images, ``"nearest"`` for label maps.

    Returns:
        ``[N, D, C, *output_size]`` of the input's type (numpy, tensor, or MetaTensor). A MetaTensor output keeps
        the input's metadata and adds ``foveation_centers`` ``[N, ndim]``, ``foveation_patch_sizes`` and
        ``foveation_affines`` ``[N, D, r, r]`` (``r`` as the input affine): each patch's world affine (the input
        affine composed with the patch-to-image voxel map).

    Example:
        >>> t = MultiScalePatches(patch_sizes=[32, 64, 128], output_size=32)
        >>> t(torch.rand(3, 256, 256), torch.tensor([[100, 80], [10, 250]])).shape
        torch.Size([2, 3, 3, 32, 32])
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        patch_sizes: Sequence[int | Sequence[int]],
        output_size: int | Sequence[int],
        padding_mode: str = "zeros",
        antialias: bool = True,
        value: float = 0.0,
        mode: str = "bilinear",
    ) -> None:
        if len(patch_sizes) == 0:
            raise ValueError("patch_sizes must hold at least one field of view.")
        self.patch_sizes = list(patch_sizes)
        self.output_size = output_size
        self.padding_mode = padding_mode
        self.antialias = antialias
        self.value = value
        self.mode = mode

    def __call__(self, img: NdarrayOrTensor, centers: NdarrayOrTensor | Sequence[Sequence[float]]) -> NdarrayOrTensor:
        out = multiscale_patches(
            img,
            centers,
            self.patch_sizes,
            self.output_size,
            padding_mode=self.padding_mode,
            antialias=self.antialias,
            value=self.value,
            mode=self.mode,
        )
        if isinstance(img, MetaTensor):
            ndim = img.ndim - 1
            ctr = torch.as_tensor(np.asarray(centers) if not isinstance(centers, torch.Tensor) else centers)
            ctr = ctr.to(torch.float64).cpu()
            sizes = [as_size_tuple(s, ndim, "patch_sizes") for s in self.patch_sizes]
            vox = patch_affines(ctr, sizes, as_size_tuple(self.output_size, ndim, "output_size"))
            affine = img.affine.to(torch.float64).cpu()
            r = affine.shape[-1]
            if r != ndim + 1:  # MONAI keeps 4x4 affines for 2D images: embed the 2D patch map
                full = torch.eye(r, dtype=torch.float64).repeat(*vox.shape[:2], 1, 1)
                full[..., :ndim, :ndim] = vox[..., :ndim, :ndim]
                full[..., :ndim, r - 1] = vox[..., :ndim, ndim]
                vox = full
            meta = dict(img.meta)
            meta["foveation_centers"] = ctr
            meta["foveation_patch_sizes"] = sizes
            meta["foveation_affines"] = affine @ vox
            return MetaTensor(out, meta=meta, applied_operations=list(img.applied_operations))
        if isinstance(img, np.ndarray):
            return out.cpu().numpy()
        return out


class FoveationCenters(Transform):
    """Centres of a regular grid of locations at ``stride`` pixels — the low-resolution map of the paper.

    Args:
        stride: grid pitch in pixels (int or per axis); one location per ``stride``-sized cell.

    Returns:
        ``(centers, grid_shape)``: int64 centres ``[N, ndim]`` (C order) and the grid shape ``ceil(S / stride)``.

    Example:
        >>> centers, grid = FoveationCenters(stride=16)(torch.zeros(1, 40, 64))
        >>> grid, centers[:2].tolist()
        ((3, 4), [[8, 8], [8, 24]])
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, stride: int | Sequence[int]) -> None:
        self.stride = stride

    def __call__(self, img: NdarrayOrTensor | Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
        return grid_centers(_spatial_shape(img, None), self.stride)


class RandFoveationCenters(Randomizable, Transform):
    """A random subset of ``num_centers`` grid locations (the paper samples 16 per image per step).

    Args:
        stride: grid pitch in pixels (as :class:`FoveationCenters`).
        num_centers: locations per call; drawn without replacement unless the grid is smaller.
        balanced: with a label map, first draw a class uniformly among the classes present at the grid
            centres, then a location of that class — so rare classes are seen (the paper's noted weakness).
        ignore_index: label value never used as a class for balancing.

    Returns:
        int64 centres ``[num_centers, ndim]``.

    Example:
        >>> t = RandFoveationCenters(stride=8, num_centers=4).set_random_state(0)
        >>> t(torch.zeros(1, 32, 32)).shape
        torch.Size([4, 2])
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        stride: int | Sequence[int],
        num_centers: int = 16,
        balanced: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        if num_centers < 1:
            raise ValueError(f"num_centers must be >= 1, got {num_centers}.")
        self.stride = stride
        self.num_centers = num_centers
        self.balanced = balanced
        self.ignore_index = ignore_index
        self._choice: np.ndarray | None = None

    def randomize(self, grid_classes: np.ndarray | int) -> None:
        """Choose location indices; ``grid_classes`` is the class per grid location, or the number of locations."""
        if isinstance(grid_classes, (int, np.integer)):
            total = int(grid_classes)
            self._choice = self.R.choice(total, self.num_centers, replace=total < self.num_centers)
            return
        classes = np.unique(grid_classes)
        if self.ignore_index is not None:
            classes = classes[classes != self.ignore_index]
        if len(classes) == 0:
            self.randomize(len(grid_classes))
            return
        picked = self.R.choice(classes, self.num_centers, replace=True)
        choice = np.empty(self.num_centers, dtype=np.int64)
        for k, cls in enumerate(picked):
            candidates = np.flatnonzero(grid_classes == cls)
            choice[k] = candidates[self.R.randint(len(candidates))]
        self._choice = choice

    def __call__(self, img: NdarrayOrTensor | Sequence[int], label: NdarrayOrTensor | None = None) -> torch.Tensor:
        spatial = _spatial_shape(img, None)
        centers, _ = grid_centers(spatial, self.stride)
        if self.balanced and label is not None:
            lab = torch.as_tensor(np.asarray(label) if isinstance(label, np.ndarray) else label).detach().cpu()
            if lab.ndim == len(spatial) + 1:
                lab = lab[0]
            idx = centers.clamp(max=torch.tensor(spatial) - 1)
            grid_classes = lab[tuple(idx.t())].numpy()
            self.randomize(grid_classes)
        else:
            self.randomize(len(centers))
        assert self._choice is not None
        return centers[torch.as_tensor(self._choice)]
