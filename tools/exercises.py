"""Write the learner's version of every chapter: exercises/NN_topic.ipynb from
nbs/NN_topic.ipynb.

An exercise in a chapter is a markdown prompt followed by three consecutive code cells,
each carrying one of these cell tags (cell metadata "tags"):

    exercise   the stub the learner completes (`return None  # your code here`)
    solution   the worked solution, which redefines the stub's names
    check      asserts whose messages say what was expected and what came back

The chapter runs all three, so it passes nbval with its solutions. The learner's version
is the chapter without its `solution` cells, with every output and execution count
cleared and a note under the title that links back to the full chapter; everything else
(nbdev directives, the hidden Colab cell, cell ids) is kept. Notebooks are written as
nbdev-clean writes them (nbformat's JSON: indent 1, sorted keys), so regenerating from
unchanged chapters changes no byte.

    python tools/exercises.py
        write exercises/ (and delete those whose chapter is gone)
    python tools/exercises.py --check
        write nothing; list stale files and exit 1 if there are any

Both exit 2, naming the notebook and the cell, when a chapter has no exercise or an
ill-formed one.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("exercise", "solution", "check")
NOTE_ID = "learner-version"
NOTE = """\
**This is the learner's version of the chapter.** The solutions are taken out: each
exercise is a code cell marked `# your code here` for you to complete, followed by a
check. Run the check after your code; until your answer is right it fails with a message
saying what it expected and what it got. The full chapter, with the solutions, is
[`nbs/{name}`](../nbs/{name})."""


class ExerciseError(ValueError):
    """A chapter whose exercises do not follow the convention (three tagged cells:
    exercise, solution, check)."""


def role(cell: dict, where: str) -> str | None:
    """The exercise tag of `cell` (one of `ROLES`), or None for a cell that is not part
    of an exercise."""
    tags = [t for t in cell.get("metadata", {}).get("tags", []) if t in ROLES]
    if len(tags) > 1:
        raise ExerciseError(
            f"{where}: a cell carries one exercise tag at most, found {tags}"
        )
    return tags[0] if tags else None


def exercises(nb: dict, name: str) -> list[int]:
    """Index of every exercise's `exercise` cell in `nb`. Raises `ExerciseError`, naming
    the notebook and the cell, unless there is at least one exercise and each is three
    consecutive code cells tagged exercise, solution, check."""
    cells, starts, i = nb["cells"], [], 0

    def where(k: int) -> str:
        return f"{name}, cell {k} (id {cells[k].get('id')})"

    while i < len(cells):
        if role(cells[i], where(i)) is None:
            i += 1
            continue
        for k, want in enumerate(ROLES, start=i):
            if k == len(cells):
                raise ExerciseError(
                    f"{where(i)}: the notebook ends before this exercise's "
                    f"`{want}` cell"
                )
            got = role(cells[k], where(k))
            if got != want or cells[k]["cell_type"] != "code":
                found = f"a {cells[k]['cell_type']} cell " + (
                    f"tagged `{got}`" if got else "without exercise tag"
                )
                raise ExerciseError(
                    f"{where(k)}: expected a code cell tagged `{want}`, found {found} "
                    "(an exercise is three consecutive code cells tagged "
                    f"{', '.join(ROLES)})"
                )
        starts.append(i)
        i += len(ROLES)
    if not starts:
        raise ExerciseError(
            f"{name}: no exercise "
            f"(three consecutive code cells tagged {', '.join(ROLES)})"
        )
    return starts


def learner_version(chapter: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The learner's version of the chapter notebook `chapter`, whose file is
    nbs/`name`; `chapter` itself is left as it is. Raises `ExerciseError` for a chapter
    without a title or with an ill-formed exercise."""
    exercises(chapter, name)
    nb = copy.deepcopy(chapter)
    nb.cells = [c for c in nb.cells if role(c, name) != "solution"]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    title = next(
        (
            i
            for i, c in enumerate(nb.cells)
            if c.cell_type == "markdown" and c.source.startswith("# ")
        ),
        None,
    )
    if title is None:
        raise ExerciseError(
            f"{name}: no title cell (a markdown cell starting with '# ')"
        )
    nb.cells.insert(
        title + 1, nbformat.v4.new_markdown_cell(NOTE.format(name=name), id=NOTE_ID)
    )
    return nb


def render(nb: nbformat.NotebookNode) -> bytes:
    "`nb` as nbformat.write (and nbdev-clean) writes it to disk."
    return (nbformat.writes(nb) + "\n").encode("utf-8")


def planned(root: Path = ROOT) -> dict[Path, bytes | None]:
    """What exercises/ must hold: the bytes of each learner's notebook, and None for a
    notebook there whose chapter no longer exists (to be deleted)."""
    want = {
        root / "exercises" / p.name: render(
            learner_version(nbformat.read(p, as_version=4), p.name)
        )
        for p in sorted((root / "nbs").glob("[0-9][0-9]_*.ipynb"))
    }
    gone = {
        p: None for p in sorted((root / "exercises").glob("*.ipynb")) if p not in want
    }
    return want | gone


def differences(root: Path = ROOT) -> list[tuple[Path, bytes | None, str]]:
    """Each file of exercises/ that regenerating changes: its path, its new content
    (None: delete it) and why it changes."""
    changes = []
    for path, content in planned(root).items():
        if content is None:
            why = "its chapter no longer exists"
        elif not path.exists():
            why = "missing"
        elif path.read_bytes() != content:
            why = "out of date"
        else:
            continue
        changes.append((path, content, why))
    return changes


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if exercises/ is stale",
    )
    args = parser.parse_args(argv)
    try:
        changes = differences(root)
    except ExerciseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, content, why in changes:
        if args.check:
            print(f"{path.relative_to(root)}: {why}")
        elif content is None:
            path.unlink()
            print(f"{path.relative_to(root)}: {why}, deleted")
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(content)
            print(f"{path.relative_to(root)}: {why}, written")
    if args.check and changes:
        print(
            "exercises/ is stale: "
            "run `python tools/exercises.py` (or `make exercises`)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
