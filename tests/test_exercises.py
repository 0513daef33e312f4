"""Every chapter has a learner's version in exercises/ (written by tools/exercises.py)
whose checks fail, with a message saying what was expected and what came back, until the
learner completes the stubs."""

import importlib.util
import json
import shutil
from pathlib import Path

import nbformat
import pytest
from jupyter_client import AsyncKernelManager
from nbclient import NotebookClient
from nbdev.clean import clean_nb, nb2str
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from nbval.kernel import CURRENT_ENV_KERNEL_NAME, NbvalKernelspecManager

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "nbs").glob("[0-9][0-9]_*.ipynb"))

_spec = importlib.util.spec_from_file_location(
    "exercises", ROOT / "tools" / "exercises.py"
)
exercises = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(exercises)


def failures_on_the_stubs(nb: nbformat.NotebookNode, cwd: Path) -> list[str]:
    """Run the learner's notebook `nb` top to bottom in this Python environment, every
    cell even after an error, and list what is wrong: a `check` cell that does not raise
    an AssertionError whose message says what was expected and what it got, or any other
    cell that raises."""
    km = AsyncKernelManager(
        kernel_name=CURRENT_ENV_KERNEL_NAME,
        kernel_spec_manager=NbvalKernelspecManager(),
    )
    # nbval's default cell timeout: chapters train small models on the CPU, for minutes
    # on a slow machine.
    NotebookClient(
        nb,
        km=km,
        timeout=2000,
        allow_errors=True,
        resources={"metadata": {"path": str(cwd)}},
    ).execute(cleanup_kc=True)
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        where = f"cell {i} (id {cell.id})"
        errors = [o for o in cell.outputs if o.output_type == "error"]
        raised = f"{errors[0].ename}: {errors[0].evalue}" if errors else "nothing"
        if exercises.role(cell, where) == "check":
            message = (
                errors[0].evalue.lower()
                if errors and errors[0].ename == "AssertionError"
                else ""
            )
            if not ("expected" in message and "got" in message):
                problems.append(
                    f"{where}: the check must fail on the stub with an AssertionError "
                    f"saying what was expected and what it got; it raised {raised}"
                )
        elif errors:
            problems.append(f"{where} raised {raised}")
    return problems


# The generator, on the committed files.


def test_committed_exercises_are_what_the_generator_writes():
    stale = [
        f"{path.relative_to(ROOT)}: {why}"
        for path, _, why in exercises.differences(ROOT)
    ]
    assert not stale, (
        f"exercises/ is stale ({stale}): "
        "run `python tools/exercises.py` (or `make exercises`)"
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_has_well_formed_exercises(path):
    assert exercises.exercises(nbformat.read(path, as_version=4), path.name)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_checks_fail_helpfully_on_the_stubs(path, tmp_path):
    # The learner's notebook runs in an empty folder, as in Colab: it needs the
    # installed package only. A chapter that runs the repository's recipes in
    # configs/, or reads its recorded runs in runs/ (its Colab cell clones the
    # repository for them), finds them beside it, and so reads the records instead
    # of training the chapter's runs again.
    learner = exercises.learner_version(nbformat.read(path, as_version=4), path.name)
    folder = tmp_path / "exercises"
    folder.mkdir()
    for needed in ("configs", "runs"):
        if any(f"../{needed}" in cell.source for cell in learner.cells):
            shutil.copytree(ROOT / needed, tmp_path / needed)
    problems = failures_on_the_stubs(learner, folder)
    assert not problems, f"learner's version of {path.name}:\n" + "\n".join(problems)


# The generator and the execution check, on a small synthetic chapter.

STUB = 'def double(x: int) -> int:\n    "Twice `x`."\n    return None  # your code here'
SOLUTION = 'def double(x: int) -> int:\n    "Twice `x`."\n    return 2 * x'
CHECK = 'assert double(2) == 4, f"expected double(2) == 4, got {double(2)!r}"'


def code(source: str, *tags: str) -> nbformat.NotebookNode:
    """A code cell as the chapter stores it after a run: with an execution count and an
    output."""
    return new_code_cell(
        source,
        metadata={"tags": list(tags)} if tags else {},
        execution_count=7,
        outputs=[new_output("stream", name="stdout", text="ran\n")],
    )


def chapter(*exercise_cells: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_markdown_cell("# Doubling\n\n> A toy chapter."),
            code("#| default_exp toy"),
            code('#| hide\nimport sys\nif "google.colab" in sys.modules: pass'),
            new_markdown_cell("**1.** Write `double(x)`."),
            *exercise_cells,
        ],
        metadata={
            "kernelspec": {
                "display_name": "python3",
                "language": "python",
                "name": "python3",
            }
        },
    )


def toy() -> nbformat.NotebookNode:
    return chapter(
        code(STUB, "exercise"), code(SOLUTION, "solution"), code(CHECK, "check")
    )


def test_learner_version_drops_solutions_clears_outputs_and_links_the_chapter():
    source = toy()
    learner = exercises.learner_version(source, "01_toy.ipynb")
    kept = [c for c in source.cells if "solution" not in c.metadata.get("tags", [])]
    assert [c.id for c in learner.cells] == [kept[0].id, exercises.NOTE_ID] + [
        c.id for c in kept[1:]
    ]
    assert [c.source for c in learner.cells[2:]] == [c.source for c in kept[1:]]
    assert all(
        c.outputs == [] and c.execution_count is None
        for c in learner.cells
        if c.cell_type == "code"
    )
    note = learner.cells[1]
    assert note.cell_type == "markdown" and "learner's version" in note.source
    assert "(../nbs/01_toy.ipynb)" in note.source
    assert source.cells[5].outputs and SOLUTION in [c.source for c in source.cells], (
        "the chapter is left as it was"
    )


def test_learner_version_needs_a_title():
    nb = toy()
    nb.cells[0].source = "Doubling"
    with pytest.raises(exercises.ExerciseError, match="01_toy.ipynb: no title cell"):
        exercises.learner_version(nb, "01_toy.ipynb")


CELL = r", cell {} \(id \w+\): "


@pytest.mark.parametrize(
    "cells, error",
    [
        ([], r": no exercise"),
        (
            [code(STUB, "exercise"), code(CHECK, "check")],
            CELL.format(5) + "expected a code cell tagged `solution`, "
            "found a code cell tagged `check`",
        ),
        (
            [
                code(STUB, "exercise"),
                code(SOLUTION, "solution"),
                new_markdown_cell("Now check."),
                code(CHECK, "check"),
            ],
            CELL.format(6) + "expected a code cell tagged `check`, "
            "found a markdown cell without exercise tag",
        ),
        (
            [code(SOLUTION, "solution"), code(CHECK, "check")],
            CELL.format(4) + "expected a code cell tagged `exercise`, "
            "found a code cell tagged `solution`",
        ),
        (
            [code(STUB, "exercise"), code(SOLUTION, "solution")],
            CELL.format(4) + "the notebook ends before this exercise's `check` cell",
        ),
        (
            [
                code(STUB, "exercise"),
                code(SOLUTION, "solution"),
                code(CHECK, "check"),
                code(CHECK, "check"),
            ],
            CELL.format(7) + "expected a code cell tagged `exercise`, "
            "found a code cell tagged `check`",
        ),
        (
            [code(STUB, "exercise"), code(SOLUTION, "solution", "check")],
            CELL.format(5)
            + r"a cell carries one exercise tag at most, found \['solution', 'check'\]",
        ),
    ],
    ids=[
        "none",
        "no-solution",
        "not-consecutive",
        "no-stub",
        "no-check",
        "stray-check",
        "two-tags",
    ],
)
def test_ill_formed_exercises_are_rejected(cells, error):
    with pytest.raises(exercises.ExerciseError, match=r"^01_toy\.ipynb" + error):
        exercises.learner_version(chapter(*cells), "01_toy.ipynb")


def test_generator_writes_checks_and_removes(tmp_path, capsys):
    (tmp_path / "nbs").mkdir()
    source = toy()
    nbformat.write(source, tmp_path / "nbs" / "01_toy.ipynb")
    learner = tmp_path / "exercises" / "01_toy.ipynb"
    assert exercises.main(["--check"], root=tmp_path) == 1 and not learner.exists()
    assert "exercises/01_toy.ipynb: missing" in capsys.readouterr().out

    assert exercises.main([], root=tmp_path) == 0
    written = learner.read_bytes()
    assert written == exercises.render(
        exercises.learner_version(source, "01_toy.ipynb")
    )
    cleaned = json.loads(written)
    # nbdev-clean, with this project's settings
    clean_nb(cleaned, allowed_cell_metadata_keys=["tags"])
    assert nb2str(cleaned).encode() == written, (
        "nbdev-clean would change the learner's notebook"
    )
    assert (
        exercises.main(["--check"], root=tmp_path) == 0
        and exercises.main([], root=tmp_path) == 0
    )
    assert learner.read_bytes() == written, "regenerating changes nothing"

    source.cells[4].source = STUB.replace("Twice", "Two times")
    nbformat.write(source, tmp_path / "nbs" / "01_toy.ipynb")
    (tmp_path / "exercises" / "02_gone.ipynb").write_bytes(written)
    capsys.readouterr()
    assert exercises.main(["--check"], root=tmp_path) == 1
    assert capsys.readouterr().out.splitlines() == [
        "exercises/01_toy.ipynb: out of date",
        "exercises/02_gone.ipynb: its chapter no longer exists",
    ]
    assert learner.read_bytes() == written, "--check writes nothing"
    assert exercises.main([], root=tmp_path) == 0
    assert (
        b"Two times" in learner.read_bytes()
        and not (tmp_path / "exercises" / "02_gone.ipynb").exists()
    )


def test_execution_check_catches_checks_that_do_not_fail_helpfully(tmp_path):
    # What test_checks_fail_helpfully_on_the_stubs reports: a check that passes on the
    # stub, a check whose message says nothing, and a cell that raises. A good exercise
    # (double) reports nothing.
    nb = chapter(
        code(STUB, "exercise"),
        code(SOLUTION, "solution"),
        code(CHECK, "check"),
        code(STUB.replace("double", "triple"), "exercise"),
        code(SOLUTION.replace("double", "triple").replace("2 *", "3 *"), "solution"),
        code("assert triple(1) is None or triple(1) == 3", "check"),
        code("quadruple = None  # your code here", "exercise"),
        code("quadruple = 4", "solution"),
        code("assert quadruple == 4, quadruple", "check"),
        code("print(undefined_name)"),
    )
    learner = exercises.learner_version(nb, "01_toy.ipynb")
    ids = {i: c.id for i, c in enumerate(learner.cells)}
    assert failures_on_the_stubs(learner, tmp_path) == [
        f"cell 8 (id {ids[8]}): the check must fail on the stub with an AssertionError "
        "saying what was expected and what it got; it raised nothing",
        f"cell 10 (id {ids[10]}): the check must fail on the stub with an "
        "AssertionError saying what was expected and what it got; "
        "it raised AssertionError: None",
        f"cell 11 (id {ids[11]}) raised NameError: "
        "name 'undefined_name' is not defined",
    ]
