"""The documentation site builds with ``mkdocs build --strict`` (no broken link, no docstring warning) and holds
what its navigation promises: the bundles' own READMEs, and an API reference rendered from the docstrings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

pytest.importorskip("mkdocs", reason="mkdocs (the `dev` extra) builds the documentation site")
pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings-python (the `dev` extra) renders the API")


def text_of(html: Path) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.read_text()))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out), "--config-file",
         str(REPO_ROOT / "mkdocs.yml")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def test_every_nav_page_is_built(site) -> None:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)  # mkdocs.yml may hold !!python tags
    config = yaml.load((REPO_ROOT / "mkdocs.yml").read_text(), Loader=Loader)

    def pages(nav):
        for entry in nav:
            for value in entry.values():
                yield from pages(value) if isinstance(value, list) else [value]

    built = [p for p in pages(config["nav"])]
    assert len(built) >= 16
    for page in built:
        html = site / (page[: -len(".md")] if page != "index.md" else "") / "index.html"
        assert html.is_file(), f"{page} was not built"
        assert len(text_of(html)) > 1000, f"{page} is nearly empty"


def test_bundle_pages_are_the_bundles_readmes(site) -> None:
    for name in ("foveation_wsi_segmentation", "segment_then_segment", "sparse_skull_completion"):
        readme = (REPO_ROOT / "bundles" / name / "docs" / "README.md").read_text()
        title = readme.splitlines()[0].lstrip("# ").strip()
        page = text_of(site / "bundles" / name / "index.html")
        assert "--8<--" not in page
        assert title in page, f"{name}: the README's title {title!r} is not on its page"
        last_heading = [line for line in readme.splitlines() if line.startswith("## ")][-1][3:].strip()
        assert last_heading in page  # included whole, not just its start


def test_api_reference_renders_docstrings_and_examples(site) -> None:
    data = (site / "api" / "data" / "index.html").read_text()
    for name in ("monai_fovea.data.geojson.label_tiff_to_geojson", "monai_fovea.data.readers.TiffFileReader",
                 "monai_fovea.data.io.write_pyramidal_tiff"):
        assert f'id="{name}"' in data, name
    # "Example:" sections are rendered as code (the griffe extension), not as running text
    prompt = '<span class="gp">&gt;&gt;&gt; </span>'  # a highlighted doctest prompt
    assert f'{prompt}<span class="n">TiffFileReader</span><span class="p">()</span><span class="o">.</span><span class="n">verify_suffix' in data
    transforms = (site / "api" / "transforms" / "index.html").read_text()
    for name in ("MultiScalePatches", "ComponentBoxes", "ToSparse"):
        assert re.search(rf'id="monai_fovea\.transforms\.[a-z_.]*{name}"', transforms), name
    for page, name in (("networks", "FoveatedSegmenter"), ("inferers", "SegmentThenSegmentInferer")):
        assert name in (site / "api" / page / "index.html").read_text()
