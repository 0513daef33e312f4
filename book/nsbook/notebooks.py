"""Each chapter notebook as readers of the book see it; the notebook files themselves
stay untouched.

A `source-read` handler rewrites the notebook before myst-nb parses it, with nbdev's own
machinery: `NBProcessor` parses the `#|` directives (comment or cell-metadata form) and
strips their lines, and nbdev's exporter (`ExportModuleProc`) decides which module each
cell goes to, so the book reads the directives exactly as `nbdev-export` does. Its
processors, in order:

* `exported_to`: nbdev's exporter, run for its bookkeeping: each exported code cell
  learns its module;
* `reader_view`: `#| hide` and `#| include: false` cells go, and so do code cells left
  empty (the `#| default_exp` cell); `#| echo: false` / `#| output: false` become
  myst-nb's `remove-input` / `remove-output` tags;
* `label_exports`: "Exported to `neural_stack.<module>`" above each exported cell still
  shown;
* `fold_solutions`: an exercise is three code cells tagged `exercise` (the learner's
  stub), `solution` and `check`; the solution's code is folded behind a "Show solution"
  toggle (myst-nb's `hide-input` tag, with per-cell prompts), so a reader tries the
  exercise before seeing it;
* `live_plotly` (`nsbook.scripts`): plotly figures become live HTML;
* `colab_links`: "Open in Colab" under the title, and "Exercises in Colab" beside it
  when the learner's notebook `exercises/<chapter>.ipynb` exists.

Why `source-read` rather than a myst-nb mime-renderer plugin: myst-nb discovers
renderers only through an installed distribution's entry point, which would put
book-only glue into the `neural_stack` package metadata. `source-read` is Sphinx's
documented event for rewriting a source before it is parsed, it names the document
(needed for the Colab links), and the files stay as they are: the ".ipynb" download
button and Colab get the real notebook.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastcore.basics import first
from fastcore.nbio import dict2nb, mk_cell, nb2dict
from nbdev.export import ExportModuleProc
from nbdev.process import NBProcessor, Processor
from sphinx.application import Sphinx

from nsbook import extension_metadata
from nsbook.scripts import live_plotly

COLAB = "https://colab.research.google.com/github"
SOLUTION_PROMPTS = {
    "code_prompt_show": "Show solution",
    "code_prompt_hide": "Hide solution",
}


def learners_notebook(root: Path, path: str) -> str | None:
    """The learner's version of the chapter at `path`, exercises/<its name>, if it
    exists in the repository `root`."""
    exercises = f"exercises/{Path(path).name}"
    return exercises if (root / exercises).is_file() else None


def _add_tag(cell, tag: str) -> None:
    cell.metadata["tags"] = [*cell.metadata.get("tags", []), tag]


def _container(cls: str, text: str, cell_id: str):
    # docutils' `container` directive: a <div class="cls"> around parsed Markdown, no
    # extension needed.
    return mk_cell(f"```{{container}} {cls}\n{text}\n```\n", "markdown", id=cell_id)


class exported_to(ExportModuleProc):
    """nbdev's exporter, for its bookkeeping only: each exported code cell learns its
    full module name (`module_`)."""

    def __init__(self, lib: str):
        self.lib = lib

    def end(self):
        for mod, cells in self.modules.items():
            name = getattr(self, "default_exp", None) if mod == "#" else mod
            # `#| export` without `#| default_exp`: nbdev exports nothing either
            if not name:
                continue
            full = name if name.split(".")[0] == self.lib else f"{self.lib}.{name}"
            for cell in cells:
                if cell.cell_type == "code":
                    cell.module_ = full


class reader_view(Processor):
    """What nbdev's directives mean to a reader: hidden and empty cells go, echo/output
    become myst-nb tags."""

    def _echo_(self, cell, value=""):
        if value == "false":
            _add_tag(cell, "remove-input")

    def _output_(self, cell, value=""):
        if value == "false":
            _add_tag(cell, "remove-output")

    def cell(self, cell):
        dirs = cell.directives_
        # metadata-form directives, already parsed into `directives_`
        cell.metadata.pop("nbdev", None)
        empty = (
            cell.cell_type == "code"
            and not cell.source.strip()
            and not cell.get("outputs")
        )
        if "hide" in dirs or dirs.get("include") == "false" or empty:
            del cell["source"]  # NBProcessor drops cells without a source


class label_exports(Processor):
    '"Exported to `module`" above each exported code cell that is shown.'

    def begin(self):
        cells = []
        for cell in self.nb.cells:
            if cell.get("module_"):
                cells.append(
                    _container(
                        "nbdev-export",
                        f"Exported to `{cell.module_}`",
                        f"nsbook-export-{cell.id}",
                    )
                )
            cells.append(cell)
        self.nb.cells = cells


class fold_solutions(Processor):
    """A `solution` cell's code is folded behind a "Show solution" / "Hide solution"
    toggle."""

    def __init__(self, nb, cell_metadata_key: str):
        super().__init__(nb)
        # myst-nb's per-cell settings (`nb_cell_metadata_key`)
        self.key = cell_metadata_key

    def cell(self, cell):
        if cell.cell_type == "code" and "solution" in cell.metadata.get("tags", []):
            _add_tag(cell, "hide-input")
            cell.metadata[self.key] = {
                **cell.metadata.get(self.key, {}),
                **SOLUTION_PROMPTS,
            }


class colab_links(Processor):
    "The chapter's Colab link(s), right under its title."

    def __init__(self, nb, links: list[str]):
        super().__init__(nb)
        self.links = links

    def begin(self):
        title = first(
            i
            for i, c in enumerate(self.nb.cells)
            if c.cell_type == "markdown" and c.source.lstrip().startswith("# ")
        )
        if title is not None:
            self.nb.cells.insert(
                title + 1,
                _container("colab-links", " · ".join(self.links), "nsbook-colab-links"),
            )


def colab_url(settings: dict[str, str], path: str) -> str:
    """Colab's URL for the notebook at `path` in the release the package is at: the
    notebook and the package its first cell installs are the same version."""
    owner_repo = settings["repository_url"].removeprefix("https://github.com/")
    return f"{COLAB}/{owner_repo}/blob/{settings['release']}/{path}"


def rewrite_notebook(
    nb: dict,
    path: str,
    root: Path,
    settings: dict[str, str],
    cell_metadata_key: str = "mystnb",
) -> dict:
    "The notebook at `path` (relative to the repository `root`) as the book shows it."
    links = [f"[Open in Colab]({colab_url(settings, path)})"]
    if exercises := learners_notebook(root, path):
        links.append(f"[Exercises in Colab]({colab_url(settings, exercises)})")
    book = dict2nb(nb)
    NBProcessor(
        nb=book,
        procs=[
            exported_to(settings["lib_name"]),
            reader_view,
            label_exports,
            fold_solutions(book, cell_metadata_key),
            live_plotly,
            colab_links(book, links),
        ],
    ).process()
    return nb2dict(book)


def _on_source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    path = Path(app.env.doc2path(docname))
    if path.suffix != ".ipynb":
        return
    rel = path.relative_to(app.srcdir).as_posix()
    if exercises := learners_notebook(Path(app.srcdir), rel):
        # Linked: Sphinx re-reads the chapter when the learner's notebook changes or
        # goes away.
        app.env.note_dependency(exercises)
    nb = rewrite_notebook(
        json.loads(source[0]),
        rel,
        Path(app.srcdir),
        app.config.nsbook_project,
        app.config.nb_cell_metadata_key,
    )
    source[0] = json.dumps(nb)


def _on_env_get_outdated(
    app: Sphinx, env: Any, added: set[str], changed: set[str], removed: set[str]
) -> list[str]:
    # A learner's notebook that appeared since its chapter was last read (so it is not
    # among the chapter's dependencies yet): re-read the chapter, so that its "Exercises
    # in Colab" link appears.
    appeared = []
    for doc in env.found_docs - added:
        path = Path(env.doc2path(doc))
        exercises = (
            learners_notebook(Path(app.srcdir), path.name)
            if path.suffix == ".ipynb"
            else None
        )
        if exercises and exercises not in env.dependencies[doc]:
            appeared.append(doc)
    return appeared


def setup(app: Sphinx) -> dict[str, Any]:
    # nsbook_project: repository URL, branch, package name
    app.setup_extension("nsbook.project")
    # serves the plotly.js that live_plotly's figures need
    app.setup_extension("nsbook.scripts")
    app.connect("source-read", _on_source_read)
    app.connect("env-get-outdated", _on_env_get_outdated)
    return extension_metadata()
