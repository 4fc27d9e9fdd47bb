"""The two networks of segment-then-segment held as one module, so MONAI engines can pass them as ``network``."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CoarseFineNet"]


class CoarseFineNet(nn.Module):
    """A coarse and a fine segmentation network as one ``nn.Module`` (state dict keys ``coarse.*``, ``fine.*``).

    MONAI's ``SupervisedEvaluator`` calls ``inferer(inputs, network)`` with one network;
    :class:`~monai_fovea.inferers.SegmentThenSegmentInferer` called with a ``CoarseFineNet`` uses both. Calling the
    module itself runs the fine network (what ``verify_net_in_out`` and crop-level code expect).

    Args:
        coarse: the network for the downscaled whole image.
        fine: the network for full-resolution crops.

    Example:
        >>> from monai.networks.nets import BasicUNet
        >>> net = CoarseFineNet(BasicUNet(2, 1, 1, features=(4, 4, 8, 8, 16, 4)), BasicUNet(2, 1, 1, features=(4, 4, 8, 8, 16, 4)))
        >>> net(torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 1, 32, 32])
    """

    def __init__(self, coarse: nn.Module, fine: nn.Module) -> None:
        super().__init__()
        self.coarse = coarse
        self.fine = fine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fine(x)
