import re

import monai_fovea


def test_version_is_semver_and_matches_metadata():
    from importlib.metadata import version

    assert re.fullmatch(r"\d+\.\d+\.\d+", monai_fovea.__version__)
    assert version("monai_fovea") == monai_fovea.__version__
