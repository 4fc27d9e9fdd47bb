"""``SparseInferer``: whole sparse volumes at full resolution in one pass, tiled only when over a memory budget."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from tqdm import tqdm

from monai_fovea.data.sparse_volume import SparseVolume

__all__ = ["SparseInferer"]


class SparseInferer(Inferer):
    """Run a sparse network on the active voxels of a whole volume.

    When the active set has at most ``memory_budget_voxels`` voxels, the volume goes through the network in one
    pass at full resolution (the point of sparse networks: the active set of a skull is ~10% of its box).
    Otherwise the bounding box of the active voxels is cut into cores of ``roi_size`` (automatically halved until
    every tile fits the budget when ``roi_size`` is None); each core is run with ``overlap`` voxels of context on
    every side, and only the outputs inside the core are kept -- every output voxel comes from exactly one tile, so
    nothing is averaged. Tile origins are aligned to the network's total stride (``net.total_stride``), so a network
    whose receptive field is at most ``overlap`` gives the same result tiled as in one pass (up to the float
    summation order).

    Args:
        memory_budget_voxels: the most active voxels that go through the network at once.
        memory_budget_bytes: alternative budget in bytes, converted with ``bytes_per_voxel``.
        bytes_per_voxel: measured (peak training/inference bytes) / (active voxels) of the network; see
            ``benchmarks/sparse_memory.py``.
        roi_size: core size of a tile (int or one per axis); None chooses it from the budget.
        overlap: context voxels around each core (>= the network's receptive-field radius for exact tiling).
        threshold: activity threshold of a dense input (any channel ``> threshold``).
        background: value of dense outputs where the network produced no voxel (use e.g. -20 for logits).
        device: where the output is gathered (default: the input's device).
        sw_device: where the network runs (default: the input's device).
        progress: show a tqdm bar over the tiles.

    Call: ``inferer(inputs, network)`` with ``inputs`` a dense ``[B, C, *S]`` tensor (→ dense ``[B, C_out, *S]``,
    a MetaTensor's meta kept) or a :class:`SparseVolume` (→ ``SparseVolume``); ``network`` maps a spconv
    ``SparseConvTensor`` to one (a :class:`~monai_fovea.networks.SparseAsDense` wrapper is unwrapped).

    Raises:
        ValueError: (call) the input has no active voxel at all ("no active voxels: the input mask is empty"):
            there is nothing to infer, and an all-background answer would hide a wrong mask or threshold upstream.
            (Inside a batch, a volume may be empty if another one is not: it gets ``background``.)

    Example::

        inferer = SparseInferer(memory_budget_voxels=200_000, overlap=16)
        logits = inferer(skull_shell[None], SparseAsDense(net, background=-20.0))
    """

    def __init__(self, memory_budget_voxels: int | None = None, memory_budget_bytes: int | None = None,
                 bytes_per_voxel: int = 2048, roi_size: Sequence[int] | int | None = None, overlap: int = 16,
                 threshold: float = 0.0, background: float = 0.0, device: torch.device | str | None = None,
                 sw_device: torch.device | str | None = None, progress: bool = False) -> None:
        super().__init__()
        if memory_budget_voxels is None and memory_budget_bytes is None:
            memory_budget_voxels = 2**62  # no budget: always one pass
        if memory_budget_voxels is None:
            memory_budget_voxels = int(memory_budget_bytes) // int(bytes_per_voxel)
        if memory_budget_voxels < 1:
            raise ValueError(f"memory_budget_voxels must be >= 1, got {memory_budget_voxels}.")
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {overlap}.")
        self.memory_budget_voxels = int(memory_budget_voxels)
        self.roi_size = roi_size
        self.overlap = overlap
        self.threshold = threshold
        self.background = background
        self.device = device
        self.sw_device = sw_device
        self.progress = progress
        self.last_num_tiles = 0  # tiles used by the last call (1 = one pass), for logs and tests
        self.last_tile_sizes: list[int] = []  # active voxels (with context) that went through the network per tile

    def __call__(self, inputs: Any, network: Any, *args: Any, **kwargs: Any) -> Any:
        from monai_fovea.networks.sparse_as_dense import SparseAsDense
        from monai_fovea.networks.sparse_blocks import EMPTY_INPUT_MESSAGE

        threshold, background = self.threshold, self.background
        if isinstance(network, SparseAsDense):
            threshold, background, network = network.threshold, network.background, network.net
        if isinstance(inputs, SparseVolume):
            vol = inputs
        else:
            x = torch.as_tensor(inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs)
            if x.ndim < 3:
                raise ValueError(f"inputs must be a dense [B, C, *S] tensor or a SparseVolume, got {tuple(x.shape)}.")
            active = (x > threshold).any(1)
            idx = torch.nonzero(active).int()
            vol = SparseVolume(idx, x.movedim(1, -1)[active].float(), tuple(x.shape[2:]), None, x.shape[0])
        if vol.num_active == 0:
            shape = "x".join(map(str, vol.spatial_shape))
            why = "the SparseVolume has no coordinates" if isinstance(inputs, SparseVolume) else (
                f"no voxel of the {shape} input is > threshold {threshold}")
            raise ValueError(f"SparseInferer: {EMPTY_INPUT_MESSAGE} ({why}). Check the mask and the threshold that "
                             "select the active voxels.")
        out_device = self.device or vol.coords.device
        coords, feats = self._run(vol, network, getattr(network, "total_stride", 1), *args, **kwargs)
        coords, feats = coords.to(out_device), feats.to(out_device)
        result = SparseVolume(coords, feats, vol.spatial_shape, vol.affine, vol.batch_size, dict(vol.meta))
        if isinstance(inputs, SparseVolume):
            return result
        dense = result.to_dense(background)
        return MetaTensor(dense, meta=dict(inputs.meta)) if isinstance(inputs, MetaTensor) else dense

    def _call_net(self, network: Any, vol: SparseVolume, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        from monai_fovea.networks._spconv import deterministic_threads

        run_device = self.sw_device or vol.coords.device
        with deterministic_threads(run_device):  # bit-identical outputs run after run on CPU
            out = network(vol.to(run_device).to_spconv(), *args, **kwargs)
        return out.indices, out.features

    def _run(self, vol: SparseVolume, network: Any, align: int, *args: Any, **kwargs: Any):
        if vol.num_active <= self.memory_budget_voxels:
            self.last_num_tiles, self.last_tile_sizes = 1, [vol.num_active]
            return self._call_net(network, vol, *args, **kwargs)
        tiles = self._tiles(vol, align)
        self.last_num_tiles, self.last_tile_sizes = len(tiles), []
        out_coords, out_feats = [], []
        margin = math.ceil(self.overlap / align) * align  # keeps every tile origin on the stride grid
        for lo, hi in tqdm(tiles, desc="sparse tiles", disable=not self.progress):
            rlo = [max(0, a - margin) for a in lo]
            rhi = [min(s, b + margin) for b, s in zip(hi, vol.spatial_shape)]
            inside = self._in_box(vol.coords, rlo, rhi)
            shift = torch.tensor([0, *rlo], dtype=torch.int32, device=vol.coords.device)
            tile = SparseVolume(vol.coords[inside] - shift, vol.features[inside],
                                tuple(b - a for a, b in zip(rlo, rhi)), None, vol.batch_size)
            self.last_tile_sizes.append(tile.num_active)
            idx, feats = self._call_net(network, tile, *args, **kwargs)
            idx = idx.to(vol.coords.device) + shift
            core = self._in_box(idx, lo, hi)
            out_coords.append(idx[core])
            out_feats.append(feats[core.to(feats.device)].to(vol.features.device))
        return torch.cat(out_coords), torch.cat(out_feats)

    @staticmethod
    def _in_box(coords: torch.Tensor, lo: Sequence[int], hi: Sequence[int]) -> torch.Tensor:
        c = coords[:, 1:]
        lo_t = torch.tensor(list(lo), device=c.device)
        hi_t = torch.tensor(list(hi), device=c.device)
        return ((c >= lo_t) & (c < hi_t)).all(1)

    def _tiles(self, vol: SparseVolume, align: int) -> list[tuple[list[int], list[int]]]:
        """Cores covering the active bounding box (origin aligned to ``align``), skipping those with no active
        voxel within their context."""
        c = vol.coords[:, 1:]
        bb_lo = [(int(v) // align) * align for v in c.min(0).values]
        bb_hi = [int(v) + 1 for v in c.max(0).values]
        if self.roi_size is not None:
            roi = [self.roi_size] * vol.ndim if isinstance(self.roi_size, int) else list(self.roi_size)
            return self._cores(vol, bb_lo, bb_hi, roi, align)
        roi = [b - a for a, b in zip(bb_lo, bb_hi)]
        while True:  # halve the longest side until every tile (with its context) fits the budget
            cores = self._cores(vol, bb_lo, bb_hi, roi, align)
            margin = math.ceil(self.overlap / align) * align
            counts = [int(self._in_box(vol.coords, [max(0, a - margin) for a in lo],
                                       [b + margin for b in hi]).sum()) for lo, hi in cores]
            axis = max(range(vol.ndim), key=lambda a: roi[a])
            if max(counts) <= self.memory_budget_voxels or roi[axis] <= align:
                return cores
            roi[axis] = max(align, math.ceil(roi[axis] / 2 / align) * align)

    def _cores(self, vol, bb_lo, bb_hi, roi, align):
        roi = [max(align, math.ceil(r / align) * align) for r in roi]
        starts = [range(a, b, r) for a, b, r in zip(bb_lo, bb_hi, roi)]
        margin = math.ceil(self.overlap / align) * align
        cores = []
        for lo in itertools.product(*starts):
            hi = [min(s, a + r) for a, r, s in zip(lo, roi, vol.spatial_shape)]
            ctx = self._in_box(vol.coords, [max(0, a - margin) for a in lo], [b + margin for b in hi])
            if bool(ctx.any()):
                cores.append((list(lo), hi))
        return cores
