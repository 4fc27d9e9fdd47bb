"""Dataset adapters: a folder in a public data set's own layout → a MONAI-style datalist (list of dicts of paths).

The data sets themselves are not redistributable or not obtainable offline; users point the adapters (and the
bundles' configs) at their copy. One section per strategy.
"""

__all__: list[str] = []

# --- foveation ---
from .gleason2019 import GLEASON_CLASSES, GLEASON_LABEL_MAP, gleason2019_datalist  # noqa: E402

__all__ += ["gleason2019_datalist", "GLEASON_LABEL_MAP", "GLEASON_CLASSES"]

# --- segment-then-segment ---
from .avt import avt_datalist, load_nrrd  # noqa: E402
from .dsb2018 import dsb2018_datalist  # noqa: E402
from .kvasir_seg import kvasir_seg_datalist  # noqa: E402

__all__ += ["dsb2018_datalist", "kvasir_seg_datalist", "avt_datalist", "load_nrrd"]

# --- sparse ---
from .skullbreak import load_skull_mask, skullbreak_datalist  # noqa: E402

__all__ += ["skullbreak_datalist", "load_skull_mask"]
