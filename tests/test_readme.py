"""The README's pipeline example runs as written and produces what its comments say."""

import re

import numpy as np
import tifffile

from conftest import REPO_ROOT


def _readme_example() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Use the transforms in your own MONAI pipeline", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_pipeline_example_shapes_match_its_comments():
    scope: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), scope)
    assert tuple(scope["patches"].shape) == (16, 3, 1, 64, 64)
    # one box per nucleus of the real DSB2018 instance mask (each instance id is its own component)
    n_nuclei = len(np.unique(tifffile.imread(scope["files"]["label"]))) - 1
    assert n_nuclei == 125
    assert tuple(scope["nuclei"]["label_boxes"].shape) == (n_nuclei, 4)
    assert tuple(scope["nuclei"]["image"].shape) == (n_nuclei, 1, 32, 32)
