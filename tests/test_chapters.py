"""Every chapter follows the course's conventions: runs in Colab on the installed
package alone, stores plotly figures as plotly's own mime type, exports to the module it
names, and fits the book's code column."""

import json
import re
import tomllib
from pathlib import Path

import pytest

import neural_stack

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))
CHAPTERS = [p for p in NOTEBOOKS if re.match(r"\d\d_", p.name)]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REPOSITORY = PYPROJECT["project"]["urls"]["Repository"]
# The book's code column shows 88 characters (91 at 1440 px): ruff's line length.
LINE_LENGTH = PYPROJECT["tool"]["ruff"]["line-length"]
PLOTLY = "application/vnd.plotly.v1+json"


def cells(path: Path, kind: str = "code") -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == kind]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_there_are_chapters():
    assert len(CHAPTERS) >= 5, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_cell_installs_this_repository_without_pins(path):
    code = [source(c) for c in cells(path)]
    colab = [
        i
        for i, s in enumerate(code)
        if '"google.colab" in sys.modules' in s and "pip" in s
    ]
    assert colab, f"{path.name}: no Colab install cell"
    first = code[colab[0]]
    assert first.startswith("#| hide"), (
        f"{path.name}: the Colab install cell must be hidden in the book"
    )
    assert all("#| default_exp" in s for s in code[: colab[0]]), (
        f"{path.name}: the Colab cell must come first"
    )
    release = f"git+{REPOSITORY}@v{neural_stack.__version__}'"  # tools/release.py
    assert release in first, f"{path.name}: install {release} (pyproject.toml)"
    assert "==" not in first, f"{path.name}: no exact pins in the install cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_plotly_figures_are_stored_as_plotly_mime_type(path):
    code = cells(path)
    uses_plotly = any("import plotly" in source(c) for c in code)
    if uses_plotly:
        assert any(
            'pio.renderers.default = "colab" if "google.colab" in sys.modules '
            'else "plotly_mimetype"' in source(c)
            for c in code
        ), f"{path.name}: select the plotly renderer"
    for c in code:
        for out in c.get("outputs", []):
            data = out.get("data", {})
            html = "".join(data.get("text/html", ""))
            assert "plotly" not in html.lower(), (
                f"{path.name}: a figure stored as HTML (embedded plotly.js?)"
            )
            if PLOTLY in data:
                assert uses_plotly and set(data) <= {PLOTLY, "text/plain"}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_has_title_and_exports_its_module(path):
    assert source(cells(path, "markdown")[0]).startswith("# "), (
        f"{path.name}: first cell is the title"
    )
    default_exp = [
        s for s in map(source, cells(path)) if s.startswith("#| default_exp ")
    ]
    assert len(default_exp) == 1, f"{path.name}: one #| default_exp"
    module = default_exp[0].split()[2]
    assert (ROOT / "neural_stack" / (module.replace(".", "/") + ".py")).exists(), module


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_ignored_outputs_say_why_and_are_asserted_next(path):
    # An output nbval does not compare (a training result, which varies in its last
    # digits between machines) must say so in a comment, and the next code cell must
    # assert the claim it supports.
    code = cells(path)
    for i, cell in enumerate(code):
        if "nbval-ignore-output" in cell.get("metadata", {}).get("tags", []):
            assert source(cell).lstrip().startswith("#"), (
                f"{path.name} cell {cell['id']}: start with a comment saying why"
            )
            assert i + 1 < len(code) and "assert " in source(code[i + 1]), (
                f"{path.name} cell {cell['id']}: "
                "the next code cell must assert what this output shows"
            )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_closes_with_questions_and_references(path):
    headings = [
        source(c).split("\n", 1)[0]
        for c in cells(path, "markdown")
        if source(c).startswith("## ")
    ]
    assert headings[-2:] == ["## Questions", "## References"], (
        f"{path.name}: ends with {headings[-2:]}"
    )
    assert "{footbibliography}" in source(cells(path, "markdown")[-1])
    cited = {
        key
        for c in cells(path, "markdown")
        for group in re.findall(r"\{footcite:[pt]\}`([^`]+)`", source(c))
        for key in group.split(",")
    }
    assert len(cited) >= 3, (
        f"{path.name} cites {sorted(cited)}: "
        "a reader compares the chapter with at least three works"
    )
    bib = (ROOT / "book" / "references.bib").read_text()
    assert not [k for k in cited if f"{{{k}," not in bib], (
        f"{path.name}: keys missing from book/references.bib"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_and_printed_outputs_fit_the_book_column(path):
    # A wider line makes the reader scroll sideways. ruff wraps code; what it cannot
    # wrap (strings, comments) and every printed line are the chapter's to keep short.
    # Plotly figures are drawn, not printed: their JSON is exempt.
    too_long = []
    for cell in cells(path):
        texts = {"code": source(cell)}
        for k, out in enumerate(cell.get("outputs", [])):
            data = out.get("data", {})
            if PLOTLY not in data:
                texts[f"output {k}"] = "".join(out.get("text", "")) + "".join(
                    data.get("text/plain", "")
                )
        for kind, text in texts.items():
            too_long += [
                f"{path.name} cell {cell.get('id')}, {kind} line {n}: "
                f"{len(line)} characters: {line}"
                for n, line in enumerate(text.splitlines(), start=1)
                if len(line) > LINE_LENGTH
            ]
    assert not too_long, (
        f"lines longer than {LINE_LENGTH} characters (the book's code column):\n"
        + "\n".join(too_long)
    )
