"""Execute every tutorial notebook (``tutorials/NN_name.ipynb``) in quick mode with nbclient, as a user would in
Jupyter, and check it:

* the notebook holds exactly the cells of its paired percent script (jupytext pairing), with no stored outputs;
* its figures are real, non-blank PNGs, and the notebook displays each of them;
* the numbers and arrays its ``main()`` returned are right (the ``check_*`` helpers of ``tutorial_checks.py``,
  which recompute them independently).

The test prepends one cell that sets ``sys.argv`` (``--quick``, an output folder) and appends one that saves the
``result`` of ``main()`` for the checks; the kernel runs in ``tutorials/``, where Jupyter would start it. One test
per notebook executes it once, so pytest-xdist never runs a tutorial twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

nbformat = pytest.importorskip("nbformat", reason="nbformat (with nbclient, the `dev` extra) executes the notebooks")
nbclient = pytest.importorskip("nbclient", reason="nbclient (the `dev` extra) executes the notebooks")
jupytext = pytest.importorskip("jupytext", reason="jupytext (the `dev` extra) pairs notebooks and scripts")

import tutorial_checks as checks  # noqa: E402

pytestmark = pytest.mark.slow

TUTORIALS = checks.TUTORIALS
STEMS = ("01_foveation", "02_segment_then_segment", "03_sparse_skull_completion", "04_transforms_in_your_own_pipeline")


def cells_of(notebook) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in notebook.cells]


def execute_notebook(stem: str, tmp_path_factory) -> tuple[dict, Path, object]:
    """Run ``tutorials/<stem>.ipynb`` in a fresh kernel; return ``(result of main(), output folder, executed nb)``."""
    out = tmp_path_factory.mktemp(stem)
    nb = nbformat.read(TUTORIALS / f"{stem}.ipynb", as_version=4)
    argv = [stem, "--quick", "--output_dir", str(out)]
    nb.cells = [
        nbformat.v4.new_code_cell(f"import sys\nsys.argv = {argv!r}"),
        *nb.cells,
        nbformat.v4.new_code_cell(f"import torch\ntorch.save(result, {str(out / 'result.pt')!r})"),
    ]
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(TUTORIALS)}})
    client.execute()
    checks.load_tutorial(stem)  # the checks read the tutorial's constants (patch sizes, class counts) from it
    return torch.load(out / "result.pt", weights_only=False), out, nb


def check_notebook_is_its_script(stem: str) -> None:
    notebook = nbformat.read(TUTORIALS / f"{stem}.ipynb", as_version=4)
    script = jupytext.read(TUTORIALS / f"{stem}.py")
    assert cells_of(notebook) == cells_of(script), f"{stem}.ipynb differs from {stem}.py: run jupytext --sync"
    assert len(notebook.cells) >= 10
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{stem}.ipynb has stored outputs"
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"


def check_figures_shown_and_real(executed, out: Path, expected: set[str]) -> None:
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == expected
    for name in pngs:
        checks.assert_png(out / name)
    shown = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(shown) == len(pngs), f"the notebook displayed {len(shown)} of {len(pngs)} figures"
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "wrote" in text  # the tutorial's own printout reached the notebook
    assert json.loads((out / "results.json").read_text())


def test_01_foveation(tmp_path_factory) -> None:
    check_notebook_is_its_script("01_foveation")
    result, out, executed = execute_notebook("01_foveation", tmp_path_factory)
    check_figures_shown_and_real(executed, out, {"patches.png", "foveation_result.png"})
    run = (result, out)
    checks.check_foveation_files(run)
    checks.check_foveation_slide_patches_are_pyramid_reads(run)
    checks.check_foveation_synthetic_patches_and_maps(run)


def test_02_segment_then_segment(tmp_path_factory) -> None:
    check_notebook_is_its_script("02_segment_then_segment")
    result, out, executed = execute_notebook("02_segment_then_segment", tmp_path_factory)
    check_figures_shown_and_real(executed, out, {"segment_then_segment.png"})
    run = (result, out)
    checks.check_segment_then_segment_files(run)
    checks.check_segment_then_segment_boxes(run)
    checks.check_segment_then_segment_scores(run)


def test_03_sparse_skull_completion(tmp_path_factory) -> None:
    check_notebook_is_its_script("03_sparse_skull_completion")
    result, out, executed = execute_notebook("03_sparse_skull_completion", tmp_path_factory)
    check_figures_shown_and_real(executed, out, {"sparse_skull_completion.png"})
    # in the notebook (no __file__) the bundle's weights are still found from the working directory
    assert result["weights"] == str(TUTORIALS.parent / "bundles" / "sparse_skull_completion" / "models" / "model.pt")
    run = (result, out)
    checks.check_sparse_occupancy_is_the_bone_shell(run)
    checks.check_sparse_defect_and_completion(run)


def test_04_transforms_in_your_own_pipeline(tmp_path_factory) -> None:
    check_notebook_is_its_script("04_transforms_in_your_own_pipeline")
    result, out, executed = execute_notebook("04_transforms_in_your_own_pipeline", tmp_path_factory)
    check_figures_shown_and_real(executed, out, {"pipelines.png"})
    run = (result, out)
    checks.check_pipeline_foveation(run)
    checks.check_pipeline_boxes(run)
    checks.check_pipeline_sparse(run)
