"""monai_fovea: segment images too large for a network at full resolution, the MONAI way.

Three interchangeable strategies, each as MONAI transforms, networks, inferers and a bundle:

* foveation (Jin et al. 2020) -- ``monai_fovea.transforms.MultiScalePatches``, ``monai_fovea.networks.FoveatedSegmenter``;
* segment-then-segment (Benčević et al. 2023) -- ``monai_fovea.inferers.SegmentThenSegmentInferer``;
* sparse CNNs on spconv (Li et al. 2022) -- ``monai_fovea.networks.SparseUNet``, ``SparseCompletionNet``.

Sub-packages are imported lazily by the user (``import monai_fovea.transforms``) so that ``import monai_fovea``
stays light and never needs optional packages such as spconv or openslide.
"""

from ._version import __version__

__all__ = ["__version__"]
