"""Foveated inference on in-memory images and volumes: a grid of locations, batched foveated predictions,
weighted aggregation into a full-resolution probability map, and the APSM (average patch size map).

The aggregation helpers (``scan_centers``, ``region_starts``, ``accumulate_predictions``) are independent of where
the patches come from, so the slide inferer reuses them for regions streamed from a WSI.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map
from monai.inferers import Inferer
from monai.utils import BlendMode
from tqdm import tqdm

from monai_fovea.networks.foveated_segmenter import FoveatedSegmenter

__all__ = ["FoveatedInferer", "scan_centers", "region_starts", "accumulate_predictions", "predict_centers"]


def _scan_starts(size: int, roi: int, step: int) -> list[int]:
    if size <= roi:
        return [0]
    starts = list(range(0, size - roi + 1, step))
    if starts[-1] != size - roi:
        starts.append(size - roi)  # the last window ends at the image edge, as MONAI's sliding window does
    return starts


def scan_centers(spatial_shape: Sequence[int], roi_size: Sequence[int], overlap: float = 0.0) -> torch.Tensor:
    """Centres ``[N, ndim]`` (int64) of windows of ``roi_size`` covering ``spatial_shape`` with ``overlap`` in [0, 1).

    Window starts advance by ``roi * (1 - overlap)`` and the last window ends at the edge; the centre of a window
    starting at ``s`` is ``s + roi // 2`` (so its ``roi``-sized crop is exactly that window).
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    axes = []
    for size, roi in zip(spatial_shape, roi_size):
        step = max(1, int(roi * (1.0 - overlap)))
        axes.append(torch.tensor(_scan_starts(int(size), int(roi), step), dtype=torch.int64) + roi // 2)
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)


def region_starts(centers: torch.Tensor, region_size: Sequence[int], output_size: Sequence[int]) -> torch.Tensor:
    """First pixel ``[N, ndim]`` (int64) of the predicted region (the smallest field of view) of each centre.

    The region is concentric with the ``output_size`` crop at the centre (see ``multiscale_patches``); when its size
    and ``output_size`` differ in parity it is rounded to the nearest pixel grid.
    """
    c = centers.to(torch.float64)
    starts = []
    for a, (s, o) in enumerate(zip(region_size, output_size)):
        g = c[:, a] - (o // 2) + (o - 1) / 2.0
        starts.append(torch.floor(g - s / 2.0 + 0.5 + 1e-9))
    return torch.stack(starts, dim=1).to(torch.int64)


def accumulate_predictions(
    out: torch.Tensor,
    norm: torch.Tensor,
    preds: torch.Tensor,
    starts: torch.Tensor,
    importance: torch.Tensor | None = None,
) -> None:
    """Add ``preds`` ``[n, K, *P]`` placed at ``starts`` ``[n, ndim]`` into ``out`` ``[K, *R]`` in place, and the
    importance weights into ``norm`` ``[1, *R]``; pixels falling outside ``R`` are dropped.

    ``starts`` are relative to ``out``'s first pixel (subtract a region's origin to accumulate into a tile of a
    larger image). Final probabilities: ``out / norm``. One ``index_add_`` for the whole batch.
    """
    k = out.shape[0]
    region = out.shape[1:]
    psize = preds.shape[2:]
    n = preds.shape[0]
    if n == 0:
        return
    ndim = len(region)
    dev = out.device
    starts = starts.to(dev)
    lin = torch.zeros((n,) + (1,) * ndim, dtype=torch.int64, device=dev)
    inside = torch.ones((n,) + tuple(psize), dtype=torch.bool, device=dev)
    stride = 1
    for a in reversed(range(ndim)):
        pos = starts[:, a, None] + torch.arange(psize[a], device=dev)[None]  # [n, P_a]
        shape = [n] + [1] * ndim
        shape[1 + a] = psize[a]
        pos = pos.reshape(shape)
        inside = inside & (pos >= 0) & (pos < region[a])
        lin = lin + pos * stride
        stride *= region[a]
    lin = lin.expand(n, *psize)[inside]
    w = (
        importance.to(device=dev, dtype=out.dtype).expand(n, *psize)
        if importance is not None
        else torch.ones((n,) + tuple(psize), dtype=out.dtype, device=dev)
    )
    vals = preds.to(device=dev, dtype=out.dtype) * w[:, None]
    out.view(k, -1).index_add_(1, lin, vals.movedim(1, 0)[:, inside])
    norm.view(1, -1).index_add_(1, lin, w[inside][None])


def predict_centers(
    network: FoveatedSegmenter,
    patches: torch.Tensor,
    weights: torch.Tensor,
    region_size: Sequence[int],
) -> torch.Tensor:
    """Class probabilities ``[n, K, *region_size]`` of a batch of foveated patches (softmax over classes, resized
    from ``output_size`` to the region's pixels when they differ)."""
    probs = torch.softmax(network.forward_patches(patches, weights), dim=1)
    if tuple(probs.shape[2:]) != tuple(region_size):
        mode = "bilinear" if probs.ndim == 4 else "trilinear"
        probs = F.interpolate(probs, size=tuple(region_size), mode=mode, align_corners=False)
    return probs


class FoveatedInferer(Inferer):
    """Segment a whole image or volume with a :class:`FoveatedSegmenter`.

    Locations are windows of the predicted region size (the smallest field of view) scanned with ``overlap``;
    each location's foveated prediction is weighted (``constant`` or ``gaussian``, MONAI's
    ``compute_importance_map``) and averaged into a full-resolution map. The head runs once on the whole
    low-resolution image; the mip-map for the patches is built once per image.

    Args:
        sw_batch_size: locations per network call.
        overlap: fraction of overlap between neighbouring windows (0 = non-overlapping tiles, as the authors'
            Gleason script).
        mode: ``"constant"`` or ``"gaussian"`` blending.
        sigma_scale: Gaussian sigma as a fraction of the window.
        sw_device: device of the network calls (default: the input's).
        device: device of the output maps (default: the input's).
        progress: show a tqdm progress bar over batches.
        return_apsm: also return the APSM.

    Returns:
        probabilities ``[B, K, *S]`` (sum to one over K; a MetaTensor with the input's metadata when the input is
        one) and, with ``return_apsm``, the APSM
        ``[B, 1, *grid]`` — ``sum_d f_d s_d`` at every cell of the head's low-resolution map.

    Example:
        >>> net = FoveatedSegmenter(None, [32, 64], 32, 2, in_channels=1, num_classes=3).eval()
        >>> probs, apsm = FoveatedInferer(sw_batch_size=8)(torch.rand(1, 1, 96, 80), net)
        >>> probs.shape, apsm.shape
        (torch.Size([1, 3, 96, 80]), torch.Size([1, 1, 3, 3]))
    """

    def __init__(
        self,
        sw_batch_size: int = 16,
        overlap: float = 0.0,
        mode: BlendMode | str = BlendMode.CONSTANT,
        sigma_scale: float | Sequence[float] = 0.125,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        return_apsm: bool = True,
    ) -> None:
        super().__init__()
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.mode = BlendMode(mode)
        self.sigma_scale = sigma_scale
        self.sw_device = sw_device
        self.device = device
        self.progress = progress
        self.return_apsm = return_apsm

    @torch.no_grad()
    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: FoveatedSegmenter, *args, **kwargs
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(network, FoveatedSegmenter):
            raise TypeError(f"network must be a FoveatedSegmenter, got {type(network).__name__}.")
        if inputs.ndim != network.spatial_dims + 2:
            raise ValueError(
                f"inputs must be [B, C, *S] with {network.spatial_dims} spatial dims, got {tuple(inputs.shape)}."
            )
        meta_src = inputs if isinstance(inputs, MetaTensor) else None
        inputs = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        sw_device = torch.device(self.sw_device) if self.sw_device is not None else inputs.device
        out_device = torch.device(self.device) if self.device is not None else inputs.device
        region = network.patch_sizes[0]
        importance = compute_importance_map(region, self.mode, self.sigma_scale, device=out_device)
        probs_all, apsm_all = [], []
        for b in range(inputs.shape[0]):
            img = inputs[b]
            spatial = img.shape[1:]
            weight_map = network.scale_weights(network.lowres(img[None].to(sw_device)))  # [1, D, *grid]
            apsm_all.append(network.average_patch_size(weight_map)[:, None].to(out_device))
            centers = scan_centers(spatial, region, self.overlap)
            starts = region_starts(centers, region, network.output_size)
            pyramid = network.build_pyramid(img)
            out = norm = None
            batches = range(0, len(centers), self.sw_batch_size)
            for i in tqdm(batches, desc="foveated inference", disable=not self.progress):
                ctr = centers[i : i + self.sw_batch_size]
                patches = network.extract_patches(img, ctr.to(img.device), pyramid=pyramid).to(sw_device)
                probs = predict_centers(network, patches, network.weights_at(weight_map, ctr.to(sw_device)), region)
                if out is None:
                    out = torch.zeros((probs.shape[1], *spatial), dtype=torch.float32, device=out_device)
                    norm = torch.zeros((1, *spatial), dtype=torch.float32, device=out_device)
                accumulate_predictions(out, norm, probs, starts[i : i + self.sw_batch_size], importance)
            assert out is not None and norm is not None
            probs_all.append(out / norm.clamp_min(torch.finfo(out.dtype).tiny))
        probs_out = torch.stack(probs_all)
        if meta_src is not None:  # same grid as the input: keep its affine and metadata (e.g. for SaveImage)
            probs_out = MetaTensor(probs_out, meta=dict(meta_src.meta), applied_operations=meta_src.applied_operations)
        return (probs_out, torch.cat(apsm_all)) if self.return_apsm else probs_out
