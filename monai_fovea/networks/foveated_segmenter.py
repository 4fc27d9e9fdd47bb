"""Foveated segmentation (seed 000): a foveation head on the low-resolution image weights D concentric patches of
different field of view per location; their weighted sum (eq. 1) goes through any segmentation backbone, or (the
``"output"`` fusion) the backbone segments each patch and the weights mix the predictions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import BasicUNet

from monai_fovea.transforms.foveation.functional import as_size_tuple, build_pyramid, multiscale_patches, pyramid_level

from .foveation_head import FoveationHead

__all__ = ["FoveatedSegmenter", "FOVEATION_MODES", "FUSIONS"]

FOVEATION_MODES = ("soft", "hard", "gumbel", "fixed", "random", "average")
FUSIONS = ("input", "output")


class FoveatedSegmenter(nn.Module):
    """Foveation head + segmentation backbone, trained jointly on the segmentation loss.

    For each location (a pixel of the low-resolution map, i.e. a ``stride``-sized cell of the image) the head
    gives weights ``f_d`` over the D patch scales; the backbone segments ``sum_d f_d * p_d`` (eq. 1 of the paper;
    or, with ``fusion="output"``, each ``p_d``, and the weights mix the predictions) and predicts the region of the
    smallest field of view, at ``output_size`` pixels.

    Modes:
        ``soft``: the head's softmax weights (eq. 1, the paper's headline).
        ``hard``: one-hot argmax in the forward pass, softmax gradient in the backward pass (straight-through).
        ``gumbel``: Gumbel-softmax samples (``tau``) of the head's logits while training; the softmax in eval.
        ``fixed``: one-hot on ``fixed_index`` (a fixed-scale baseline; the head is not used).
        ``random``: a uniformly random one-hot scale per location, drawn afresh on every call. (The authors'
            code draws one random scale for the whole run — a bug; this is the baseline the paper describes.)
        ``average``: ``1 / D`` for every scale.

    Fusions (where the weights act):
        ``input`` (the paper's eq. 1): the backbone segments the blend ``sum_d f_d p_d`` and predicts the smallest
            field of view's region from it: for a wide scale it must learn to zoom into the centre of its input,
            which a small backbone learns only coarsely (its skip connections carry detail from the wrong place).
        ``output`` (an extension): the backbone segments every scale's patch in that patch's own geometry; the
            central region of each prediction (the smallest FoV, ``output_size * s_0 / s_d`` pixels) is upsampled
            (bilinear) to ``output_size`` and the class probabilities are mixed, ``log sum_d f_d softmax(z_d)``
            (returned as logits: their softmax is the mixture). A mixture of fixed-FoV experts whose weights the
            head learns per location: the loss rewards weight on the scale that predicts the location best. D
            backbone passes per location instead of one (scales with zero weight everywhere are skipped).

    Args:
        backbone: any segmentation ``nn.Module`` mapping ``[N, in_channels, *output_size]`` to
            ``[N, num_classes, *output_size]``; ``None`` builds a MONAI ``BasicUNet`` (needs ``num_classes``).
            The paper's HRNetV2-W48 is not built in: timm's HRNet needs torchvision, which has no CPU wheel in this
            project's environment — pass such a network yourself as ``backbone``.
        patch_sizes: D fields of view (int or per axis), ascending; ``patch_sizes[0]`` is the predicted region.
        output_size: pixels of every patch (and of the prediction).
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: classes of the default backbone (ignored when ``backbone`` is given).
        mode: one of ``FOVEATION_MODES``.
        fixed_index: the scale used by ``mode="fixed"``.
        stride: pitch of the low-resolution map in image pixels (one location per cell); default the smallest
            field of view (non-overlapping tiles of the predicted region).
        head_channels: hidden widths of the head (default ``(8 D, 8 D)``).
        tau: Gumbel-softmax temperature (the authors use 1).
        padding_mode, antialias: patch extraction options (see ``multiscale_patches``).
        fusion: ``"input"`` or ``"output"`` (see Fusions).

    Example:
        >>> net = FoveatedSegmenter(None, patch_sizes=[32, 64, 128], output_size=32, spatial_dims=2,
        ...                         in_channels=3, num_classes=4)
        >>> logits, weights = net(torch.rand(3, 256, 256), torch.tensor([[40, 40], [200, 120]]))
        >>> logits.shape, weights.shape
        (torch.Size([2, 4, 32, 32]), torch.Size([2, 3]))
    """

    def __init__(
        self,
        backbone: nn.Module | None,
        patch_sizes: Sequence[int | Sequence[int]],
        output_size: int | Sequence[int],
        spatial_dims: int = 2,
        in_channels: int = 3,
        num_classes: int | None = None,
        mode: str = "soft",
        fixed_index: int = 0,
        stride: int | Sequence[int] | None = None,
        head_channels: Sequence[int] | None = None,
        tau: float = 1.0,
        padding_mode: str = "zeros",
        antialias: bool = True,
        fusion: str = "input",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if len(patch_sizes) == 0:
            raise ValueError("patch_sizes must hold at least one field of view.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.patch_sizes = [as_size_tuple(s, spatial_dims, f"patch_sizes[{d}]") for d, s in enumerate(patch_sizes)]
        self.output_size = as_size_tuple(output_size, spatial_dims, "output_size")
        self.num_scales = len(self.patch_sizes)
        self.stride = as_size_tuple(stride if stride is not None else self.patch_sizes[0], spatial_dims, "stride")
        self.fixed_index = fixed_index
        self.mode = mode  # validated by the setter below
        self.tau = tau
        self.padding_mode = padding_mode
        self.antialias = antialias
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}.")
        self.fusion = fusion
        if backbone is None:
            if num_classes is None:
                raise ValueError("num_classes is needed to build the default BasicUNet backbone (backbone=None).")
            backbone = BasicUNet(spatial_dims, in_channels, num_classes, features=(16, 16, 32, 64, 128, 16))
        self.backbone = backbone
        self.head = FoveationHead(spatial_dims, in_channels, self.num_scales, head_channels)

    # --- configuration -------------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in FOVEATION_MODES:
            raise ValueError(f"mode must be one of {FOVEATION_MODES}, got {value!r}.")
        if value == "fixed" and not 0 <= self.fixed_index < self.num_scales:
            raise ValueError(f"fixed_index must be in [0, {self.num_scales}), got {self.fixed_index}.")
        self._mode = value

    @property
    def scale_sizes(self) -> torch.Tensor:
        """One size per scale for the APSM: the geometric mean of its per-axis field of view, in pixels."""
        return torch.tensor([math.prod(s) ** (1.0 / self.spatial_dims) for s in self.patch_sizes])

    # --- the low-resolution map and the weights ------------------------------------------------------------------
    def lowres(self, image: torch.Tensor) -> torch.Tensor:
        """The low-resolution image ``[B, C, *grid]``: the mean of each ``stride`` cell (an antialiased resize)."""
        pool = F.avg_pool2d if self.spatial_dims == 2 else F.avg_pool3d
        x = image if image.is_floating_point() else image.float()
        return pool(x, kernel_size=self.stride, stride=self.stride, ceil_mode=True)

    def scale_weights(self, lowres: torch.Tensor) -> torch.Tensor:
        """Per-location scale weights ``[B, D, *grid]`` for a low-resolution image, according to ``mode``."""
        shape = (lowres.shape[0], self.num_scales, *lowres.shape[2:])
        if self.mode == "fixed":
            w = torch.zeros(shape, device=lowres.device, dtype=lowres.dtype)
            w[:, self.fixed_index] = 1.0
            return w
        if self.mode == "average":
            return torch.full(shape, 1.0 / self.num_scales, device=lowres.device, dtype=lowres.dtype)
        if self.mode == "random":
            pick = torch.randint(self.num_scales, (shape[0], *shape[2:]), device=lowres.device)
            return F.one_hot(pick, self.num_scales).movedim(-1, 1).to(lowres.dtype)
        logits = self.head(lowres, return_logits=True)
        if self.mode == "gumbel" and self.training:
            return F.gumbel_softmax(logits, tau=self.tau, hard=False, dim=1)
        soft = torch.softmax(logits, dim=1)
        if self.mode == "hard":
            hard = F.one_hot(soft.argmax(1), self.num_scales).movedim(-1, 1).to(soft.dtype)
            # straight-through: exactly one-hot in value, the softmax's gradient in the backward pass
            return hard + (soft - soft.detach())
        return soft

    def cell_index(self, centers: torch.Tensor, grid_shape: Sequence[int]) -> torch.Tensor:
        """Low-resolution map index ``[N, ndim]`` (int64) of the cell holding each centre."""
        stride = torch.tensor(self.stride, device=centers.device)
        idx = torch.div(centers.to(torch.float64), stride, rounding_mode="floor").to(torch.int64)
        hi = torch.tensor(grid_shape, device=centers.device) - 1
        return torch.minimum(idx.clamp(min=0), hi)

    def weights_at(self, weight_map: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        """Weights ``[N, D]`` of the cells holding ``centers`` from a map ``[D, *grid]`` or ``[1, D, *grid]``."""
        wm = weight_map[0] if weight_map.ndim == self.spatial_dims + 2 else weight_map
        idx = self.cell_index(centers.to(wm.device), wm.shape[1:])
        return wm[(slice(None), *idx.t())].t()

    def average_patch_size(self, weights: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """APSM: ``sum_d f_d * s_d`` over the scale axis ``dim`` of a weight tensor (map or ``[N, D]``)."""
        sizes = self.scale_sizes.to(device=weights.device, dtype=weights.dtype)
        shape = [1] * weights.ndim
        shape[dim] = self.num_scales
        return (weights * sizes.reshape(shape)).sum(dim)

    # --- patches and prediction ----------------------------------------------------------------------------------
    def extract_patches(
        self, image: torch.Tensor, centers: torch.Tensor, pyramid: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Multi-scale patches ``[N, D, C, *output_size]`` of one image ``[C, *S]`` (or ``[1, C, *S]``)."""
        img = image[0] if image.ndim == self.spatial_dims + 2 else image
        return multiscale_patches(
            img, centers, self.patch_sizes, self.output_size, self.padding_mode, antialias=self.antialias,
            pyramid=pyramid,
        )

    def build_pyramid(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The mip-map of ``image`` ``[C, *S]`` deep enough for every scale (reuse it across batches of centres)."""
        img = image[0] if image.ndim == self.spatial_dims + 2 else image
        if not self.antialias:
            return [img]
        top = max(pyramid_level(min(s / o for s, o in zip(ps, self.output_size))) for ps in self.patch_sizes)
        return build_pyramid(img, top + 1)

    def target_patches(self, label: torch.Tensor, centers: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Labels ``[N, *output_size]`` (int64) of the predicted region (the smallest field of view), nearest
        resampled, ``ignore_index`` outside the image."""
        lab = label[0] if label.ndim == self.spatial_dims + 2 else label
        if lab.ndim == self.spatial_dims:
            lab = lab[None]
        out = multiscale_patches(
            lab.long(), centers, self.patch_sizes[:1], self.output_size, "constant", antialias=False,
            value=ignore_index, mode="nearest",
        )
        return out[:, 0, 0]

    def forward_patches(
        self, patches: torch.Tensor, weights: torch.Tensor, scales: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Backbone logits ``[N, classes, *output_size]`` of the patches fused with ``weights`` (see Fusions; for
        ``fusion="input"`` the foveated input ``sum_d weights[:, d] * patches[:, d]``).

        Args:
            patches: ``[N, D', C, *output_size]`` (from ``extract_patches`` or a WSI reader).
            weights: ``[N, D']`` scale weights (from ``weights_at``).
            scales: the scale index of each of the D' patches (default all D scales); the scales left out must
                have zero weight (e.g. a WSI batch that reads only the scales it uses).
        """
        scales = list(range(self.num_scales)) if scales is None else [int(d) for d in scales]
        if patches.ndim != self.spatial_dims + 3 or patches.shape[1] != len(scales):
            raise ValueError(f"patches must be [N, {len(scales)}, C, *output_size], got {tuple(patches.shape)}.")
        if weights.shape != patches.shape[:2]:
            raise ValueError(f"weights must be [N, D] = {tuple(patches.shape[:2])}, got {tuple(weights.shape)}.")
        w = weights.to(patches.dtype)
        if self.fusion == "input":
            return self.backbone((patches * w.reshape(*w.shape, *([1] * (patches.ndim - 2)))).sum(1))
        if len(scales) == 1:  # one scale: its prediction (the mixture of one expert)
            return self.central_logits(self.backbone(patches[:, 0]), scales[0])
        # one backbone call for all scales (a D' times larger batch: better use of a GPU than D' calls)
        out = self.backbone(patches.flatten(0, 1)).unflatten(0, patches.shape[:2])
        mix = 0.0
        for j, d in enumerate(scales):
            probs = torch.softmax(self.central_logits(out[:, j], d).float(), dim=1)
            mix = mix + w[:, j].float().reshape(-1, *([1] * (probs.ndim - 1))) * probs
        # log of the mixture: its softmax is the mixture (weights sum to 1); the clamp keeps log finite
        return torch.log(mix.clamp_min(1e-12)).to(patches.dtype)

    def central_logits(self, logits: torch.Tensor, scale: int) -> torch.Tensor:
        """The smallest field of view's region of a prediction ``[N, classes, *output_size]`` made in scale
        ``scale``'s geometry, upsampled (bilinear) to ``output_size``: what a fixed-FoV network predicts for the
        region when it segments the whole wide patch (``fusion="output"``)."""
        if scale == 0 or self.patch_sizes[scale] == self.patch_sizes[0]:
            return logits
        # the region in output pixels, as a crop box of the resampled wide patch (concentric; may be fractional)
        size = [o * s0 / sd for o, s0, sd in zip(self.output_size, self.patch_sizes[0], self.patch_sizes[scale])]
        theta = torch.zeros(1, self.spatial_dims, self.spatial_dims + 1, device=logits.device, dtype=logits.dtype)
        for a in range(self.spatial_dims):  # grid_sample's affine is in (x, y[, z]) order: last axis first
            theta[0, a, a] = size[self.spatial_dims - 1 - a] / self.output_size[self.spatial_dims - 1 - a]
        # the same box for every prediction: one grid, expanded over the batch
        grid = F.affine_grid(theta, [1, 1, *self.output_size], align_corners=False)
        grid = grid.expand(logits.shape[0], *grid.shape[1:])
        return F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def forward(self, image: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training/inference forward on one image.

        Args:
            image: ``[C, *S]`` or ``[1, C, *S]``.
            centers: ``[N, ndim]`` locations in image pixels.

        Returns:
            logits ``[N, classes, *output_size]`` of the smallest-FoV region around each centre, and the weights
            ``[N, D]`` used.
        """
        img = image if image.ndim == self.spatial_dims + 2 else image[None]
        if img.shape[0] != 1:
            raise ValueError(f"image must be one image [C, *S] or [1, C, *S], got {tuple(image.shape)}.")
        centers = torch.as_tensor(centers, device=img.device)
        weights = self.weights_at(self.scale_weights(self.lowres(img)), centers)
        if self.mode == "fixed":
            # one-hot weights: only the fixed scale is needed (equal to the weighted sum, cheaper)
            patch = multiscale_patches(
                img[0], centers, self.patch_sizes[self.fixed_index : self.fixed_index + 1], self.output_size,
                self.padding_mode, antialias=self.antialias,
            )
            return self.forward_patches(patch, weights[:, self.fixed_index : self.fixed_index + 1],
                                        scales=[self.fixed_index]), weights
        return self.forward_patches(self.extract_patches(img[0], centers), weights), weights
