"""Unit tests of the book's Sphinx extensions (book/nsbook/), without building the book.

Small synthetic notebooks go through the notebook rewrite that every chapter goes
through; the nbval report parser reads a small JUnit file; the `{chapter}` role's
matching runs on a list of names.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import nbformat
import pytest

import neural_stack
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book"))

from nsbook.chapters import resolve  # noqa: E402
from nsbook.nbval_report import read_nbval_report  # noqa: E402
from nsbook.notebooks import rewrite_notebook  # noqa: E402
from nsbook.project import project_settings  # noqa: E402

SETTINGS = {
    "repository_url": "https://github.com/o/r",
    "branch": "main",
    "release": "v0.1.0",
    "lib_name": "pkg",
}
COLAB = "https://colab.research.google.com/github/o/r/blob/v0.1.0/"
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def code(src: str, **kw) -> dict:
    return {
        "cell_type": "code",
        "metadata": {},
        "source": src,
        "outputs": [],
        "execution_count": None,
        **kw,
    }


def md(src: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": src}


def notebook(*cells: dict) -> dict:
    cells = [{"id": f"c{i}", **c} for i, c in enumerate(cells)]
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def rewrite(
    nb: dict, root: Path = ROOT / "tests", path: str = "nbs/01_x.ipynb", **kw
) -> list[dict]:
    """The rewritten cells, with each cell's source joined; the result must be a valid
    notebook. `root` is the repository root the rewrite looks in for exercises/ (tests/
    has none)."""
    out = rewrite_notebook(nb, path, root, SETTINGS, **kw)
    nbformat.validate(nbformat.from_dict(out))
    return [{**c, "source": "".join(c["source"])} for c in out["cells"]]


def sources(cells: list[dict]) -> list[str]:
    return [c["source"] for c in cells]


def by_source(cells: list[dict]) -> dict[str, dict]:
    return {c["source"]: c for c in cells}


def test_directives_never_show_and_hidden_cells_go():
    cells = rewrite(
        notebook(
            md("# Title"),
            code("#| default_exp models.thing"),
            code("#| hide\nimport secret"),
            code("#|include: false\nx = 1"),
            code("#| export\ndef f(): pass"),
            code("", outputs=[]),
            code("z = 3", metadata={"nbdev": {"hide": "true"}}),
            md("#| hide\nA note for authors."),
        )
    )
    assert not any("#|" in s for s in sources(cells))
    assert not any(
        "secret" in s or s == "x = 1" or s == "z = 3" or "authors" in s
        for s in sources(cells)
    )
    # default_exp, empty
    assert not any(c["cell_type"] == "code" and not c["source"].strip() for c in cells)
    assert all("nbdev" not in c["metadata"] for c in cells)


def test_echo_and_output_become_myst_nb_tags():
    cells = by_source(
        rewrite(
            notebook(
                md("# Title"),
                code(
                    "#| echo: false\nprint(1)",
                    metadata={"tags": ["nbval-ignore-output"]},
                ),
                code("y = 2", metadata={"nbdev": {"output": "false"}}),
                code("#| echo: true\nw = 4"),
            )
        )
    )
    assert cells["print(1)"]["metadata"]["tags"] == [
        "nbval-ignore-output",
        "remove-input",
    ]
    assert cells["y = 2"]["metadata"]["tags"] == ["remove-output"]
    assert "tags" not in cells["w = 4"]["metadata"]


def test_exported_cells_are_labelled_with_their_module():
    cells = rewrite(
        notebook(
            md("# Title"),
            code("#| default_exp models.thing"),
            code("#| export\ndef f(): pass"),
            code("#| exporti other.mod\ndef _g(): pass"),
            code("#| exports pkg.named\ndef h(): pass"),
            code("#| hide\n#| export\ndef hidden(): pass"),
            code("plain = 1"),
        )
    )
    labels = [
        (src, cells[i + 1]["source"])
        for i, src in enumerate(sources(cells))
        if src.startswith("```{container} nbdev-export")
    ]
    assert labels == [
        (
            "```{container} nbdev-export\nExported to `pkg.models.thing`\n```\n",
            "def f(): pass",
        ),
        (
            "```{container} nbdev-export\nExported to `pkg.other.mod`\n```\n",
            "def _g(): pass",
        ),
        (
            "```{container} nbdev-export\nExported to `pkg.named`\n```\n",
            "def h(): pass",
        ),
    ]


def test_no_label_without_a_module():
    """`#| export` with no `#| default_exp`: nbdev exports nothing, so no label claims
    otherwise."""
    cells = rewrite(notebook(md("# Title"), code("#| export\ndef f(): pass")))
    assert "def f(): pass" in sources(cells)
    assert not any("Exported to" in s for s in sources(cells))


def test_solution_cells_are_folded_behind_their_own_toggle():
    cells = by_source(
        rewrite(
            notebook(
                md("# Title"),
                code(
                    "answer = None  # your code here", metadata={"tags": ["exercise"]}
                ),
                code(
                    "answer = 42",
                    metadata={
                        "tags": ["solution"],
                        "mystnb": {"number_source_lines": True},
                    },
                ),
                code("assert answer == 42", metadata={"tags": ["check"]}),
                code("other = 1", metadata={"tags": ["hide-input"]}),
            )
        )
    )
    solution = cells["answer = 42"]["metadata"]
    assert solution["tags"] == ["solution", "hide-input"]
    assert solution["mystnb"] == {
        "number_source_lines": True,
        "code_prompt_show": "Show solution",
        "code_prompt_hide": "Hide solution",
    }
    for src in ("answer = None  # your code here", "assert answer == 42", "other = 1"):
        # other cells keep myst-nb's default prompts
        assert "mystnb" not in cells[src]["metadata"]
    assert cells["answer = None  # your code here"]["metadata"]["tags"] == ["exercise"]


def test_solution_prompts_use_myst_nb_cell_metadata_key():
    cells = by_source(
        rewrite(
            notebook(md("# T"), code("a = 1", metadata={"tags": ["solution"]})),
            cell_metadata_key="render_opts",
        )
    )
    assert (
        cells["a = 1"]["metadata"]["render_opts"]["code_prompt_show"] == "Show solution"
    )


def test_colab_link_under_the_title(tmp_path):
    cells = rewrite(
        notebook(md("Intro before the title"), md("# Title\n\n> summary"), md("Text.")),
        root=tmp_path,
        path="nbs/01_x.ipynb",
    )
    assert sources(cells)[:2] == ["Intro before the title", "# Title\n\n> summary"]
    assert sources(cells)[2] == (
        f"```{{container}} colab-links\n[Open in Colab]({COLAB}nbs/01_x.ipynb)\n```\n"
    )
    assert not any("Exercises" in s for s in sources(cells))


def test_exercises_link_only_when_the_learners_notebook_exists(tmp_path):
    (tmp_path / "exercises").mkdir()
    (tmp_path / "exercises" / "02_y.ipynb").write_text("{}")
    with_exercises = rewrite(
        notebook(md("# Title")), root=tmp_path, path="nbs/02_y.ipynb"
    )
    assert sources(with_exercises)[1] == (
        f"```{{container}} colab-links\n[Open in Colab]({COLAB}nbs/02_y.ipynb) · "
        f"[Exercises in Colab]({COLAB}exercises/02_y.ipynb)\n```\n"
    )
    without = rewrite(notebook(md("# Title")), root=tmp_path, path="nbs/01_x.ipynb")
    assert "Exercises in Colab" not in sources(without)[1]


def test_plotly_figures_become_live_html_without_plotly_js():
    fig = {
        "data": [{"type": "heatmap", "z": [[1, 2], [3, 4]]}],
        "layout": {"title": {"text": "t"}},
    }
    out = {
        "output_type": "display_data",
        "metadata": {},
        "data": {PLOTLY_MIME: fig, "text/plain": "Figure"},
    }
    cells = rewrite(notebook(md("# Title"), code("fig", outputs=[out])))
    (output,) = [o for c in cells for o in c.get("outputs", [])]
    assert list(output["data"]) == ["text/html"]
    html = "".join(output["data"]["text/html"])
    assert (
        'class="plotly-graph-div"' in html
        and 'id="plotly-c1-0"' in html
        and "Plotly.newPlot" in html
    )
    # plotly.js comes from _static, once per page
    assert "<script src" not in html and len(html) < 5_000


def test_nbval_report(tmp_path):
    report = tmp_path / "report.xml"
    report.write_text("""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" timestamp="2026-01-02T03:04:05.000000+00:00">
  <testcase classname="nbs.01_attention.ipynb" name="Cell 0" time="1.5"/>
  <testcase classname="nbs.01_attention.ipynb" name="Cell 1" time="0.25">
    <skipped message="tag"/></testcase>
  <testcase classname="nbs.02_patch_embedding.ipynb" name="Cell 0" time="2">
    <failure message="diff"/></testcase>
  <testcase classname="nbs.02_patch_embedding.ipynb" name="Cell 1" time="1">
    <error message="boom"/></testcase>
  <testcase classname="tests.test_x" name="test_y" time="9"/>
</testsuite></testsuites>""")
    assert read_nbval_report(report) == [
        {
            "docname": "nbs/01_attention",
            "cells": 2,
            "seconds": 1.75,
            "passed": 1,
            "failed": 0,
            "skipped": 1,
        },
        {
            "docname": "nbs/02_patch_embedding",
            "cells": 2,
            "seconds": 3.0,
            "passed": 0,
            "failed": 2,
            "skipped": 0,
        },
    ]


def test_chapter_role_matching():
    docs = {
        "nbs/01_attention",
        "nbs/02_patch_embedding",
        "nbs/06_training_loop",
        "nbs/07_training_data",
    }
    assert resolve("Attention <nbs/*_attention>", docs) == (
        "Attention",
        ["nbs/01_attention"],
    )
    assert resolve("Training <nbs/*_training*>", docs) == (
        "Training",
        ["nbs/06_training_loop", "nbs/07_training_data"],
    )
    assert resolve("Visualising attention <nbs/*_visuali[sz]ation>", docs) == (
        "Visualising attention",
        [],
    )
    assert resolve("nbs/*_patch_embedding", docs) == (
        "nbs/*_patch_embedding",
        ["nbs/02_patch_embedding"],
    )


def test_project_settings_from_pyproject(tmp_path):
    assert project_settings(ROOT) == {
        "repository_url": "https://github.com/neural-stack/neural-stack",
        "branch": "main",
        "release": f"v{neural_stack.__version__}",
        "lib_name": "neural_stack",
    }
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[project.urls]\n'
        'Repository = "https://gitlab.com/o/r"\n[tool.nbdev]\n'
    )
    with pytest.raises(ValueError, match="https://github.com/OWNER/NAME"):
        project_settings(tmp_path)


def test_every_extension_is_loaded_by_the_book():
    """Each module of book/nsbook/ is a Sphinx extension (a setup function) that
    _config.yml loads."""
    config = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())
    loaded = set(config["sphinx"]["local_extensions"])
    modules = {
        f"nsbook.{p.stem}"
        for p in (ROOT / "book" / "nsbook").glob("*.py")
        if p.stem != "__init__"
    }
    assert loaded == modules
    for module in modules:
        tree = ast.parse(
            (ROOT / "book" / Path(*module.split("."))).with_suffix(".py").read_text()
        )
        assert any(
            isinstance(n, ast.FunctionDef) and n.name == "setup" for n in tree.body
        ), f"{module}: no setup()"
