"""Sphinx glue for the neural-stack book: what every chapter needs, implemented once.

Loaded by `book/_config.yml` (`sphinx.local_extensions`). For every notebook the book renders it

* hides nbdev: `#|` directive lines never show, `#| hide` / `#| include: false` cells are dropped,
  `#| echo: false` / `#| output: false` become myst-nb's `remove-input` / `remove-output` tags, and
  each `#| export` cell gets a label naming the module it is exported to (`#| default_exp` or the
  directive's own argument). Directives are parsed by fastcore's `NbCell.directives`, the parser
  nbdev 3 itself uses, so comment-form and metadata-form directives are both understood;
* adds an "Open in Colab" link under the chapter title, to the notebook in the repository;
* turns plotly figures (`application/vnd.plotly.v1+json`, plotly's own mime type, which is what the
  notebooks store) into live figures with `plotly.io.to_html`, drawn by the plotly.js that ships
  inside the installed plotly package and is copied into the site's `_static/` (no CDN);
* takes the repository URL and branch from `pyproject.toml` (`[project.urls] Repository`, read by
  nbdev's own `get_config`), so they are set in one place for the theme's launch/repository buttons
  and for the Colab links;
* provides the `{chapter}` role for the curriculum pages: `` {chapter}`Title <nbs/*_topic>` `` links
  every chapter whose name matches, or reads "Title (coming)" while none exists yet, so the
  syllabus never holds a broken link and picks up new chapters by itself;
* provides the `{nbval-report}` directive: per-chapter execution time and status, read from the
  JUnit XML that `make nbval` writes.

Why a `source-read` handler rather than a myst-nb mime-renderer plugin: myst-nb discovers mime
renderers only through the `myst_nb.mime_renderers` entry point of an installed distribution, which
would put book-only glue into the `neural_stack` package metadata. `source-read` is the documented
Sphinx event for rewriting a document's source before it is parsed, it gives the document name
(needed for the Colab link), and it leaves the notebook files themselves untouched: the "download
.ipynb" button and Colab get the real notebook.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


from docutils import nodes
from docutils.parsers.rst import directives
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective, SphinxRole
from sphinx.util.fileutil import copy_asset_file
from sphinx.util.nodes import split_explicit_title

__version__ = "0.1.0"
logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PLOTLY_MIME = "application/vnd.plotly.v1+json"
PLOTLY_JS = "plotly.min.js"
EXPORT_DIRECTIVES = {"export", "exports", "exporti"}
COLAB = "https://colab.research.google.com/github"


# ---------------------------------------------------------------- project settings (pyproject)

def _project_settings(root: Path) -> dict[str, str]:
    "Repository URL, branch and package name, as nbdev 3 reads them from `pyproject.toml`."
    from nbdev.config import get_config

    cfg = get_config(str(root))  # [project.urls] Repository, [tool.nbdev]
    repo = (cfg.git_url or "").rstrip("/")
    if not repo.startswith("https://github.com/"):
        raise ValueError(f"pyproject.toml [project.urls] Repository = {repo!r}: expected https://github.com/OWNER/NAME")
    return {"repository_url": repo, "branch": cfg.get("branch") or "main", "lib_name": Path(cfg.lib_path).name}


def _on_config_inited(app: Sphinx, config: Any) -> None:
    settings = _project_settings(Path(app.srcdir))
    app.nbdev_book_settings = settings  # type: ignore[attr-defined]
    opts = dict(config.html_theme_options or {})
    opts["repository_url"] = settings["repository_url"]
    opts["repository_branch"] = settings["branch"]
    # Jupyter Book refuses `use_repository_button` without a URL in _config.yml; we own the URL.
    opts["use_repository_button"] = True
    config.html_theme_options = opts
    # The source folder is the repository root. Sphinx's include_patterns choose the pages, but Sphinx
    # still walks every folder not matched by exclude_patterns: prune every top-level entry that holds
    # no page (.venv, data or run folders a chapter may create), beyond the fixed list in _config.yml.
    roots = {pattern.split("/")[0] for pattern in config.include_patterns}
    extra = sorted(p.name for p in Path(app.srcdir).iterdir() if p.name not in roots)
    config.exclude_patterns = list(config.exclude_patterns) + [p for p in extra if p not in config.exclude_patterns]
    # Our CSS lives next to this file; Sphinx copies html_static_path entries into _static/.
    config.html_static_path = list(config.html_static_path) + [str(HERE / "_static")]


# ---------------------------------------------------------------- notebook rewriting

def _text(src: str | list[str]) -> str:
    return "".join(src) if isinstance(src, list) else src


def _md_cell(text: str, cell_id: str) -> dict:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": text}


def _container(cls: str, text: str) -> str:
    # docutils' `container` directive: a <div class="cls"> around parsed Markdown, no extension needed.
    return f"```{{container}} {cls}\n{text}\n```\n"


def _plotly_html(fig: dict, div_id: str) -> str:
    import plotly.io as pio

    # include_plotlyjs=False: the page loads _static/plotly.min.js once (see _on_page_context).
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, validate=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def rewrite_notebook(nb: dict, docname: str, notebook_path: str, settings: dict[str, str]) -> dict:
    "The notebook as the book shows it: directives hidden, exports labelled, Colab link, live plotly."
    from fastcore.nbio import NbCell  # nbdev 3's own cell/directive parser

    lib = settings["lib_name"]
    owner_repo = settings["repository_url"].removeprefix("https://github.com/")
    colab = f"{COLAB}/{owner_repo}/blob/{settings['branch']}/{notebook_path}"
    default_exp = None
    cells: list[dict] = []
    colab_done = False
    slug = re.sub(r"[^A-Za-z0-9]+", "-", docname).strip("-")

    for i, cell in enumerate(nb.get("cells", [])):
        src = _text(cell.get("source", ""))
        cell = {**cell, "source": src}
        if cell["cell_type"] in ("code", "markdown"):
            parsed = NbCell(i, {"cell_type": cell["cell_type"], "source": src,
                                "metadata": dict(cell.get("metadata", {}))})
            dirs = parsed.directives
            if dirs:
                parsed.remove_directives()
                cell["source"] = src = parsed.source
                if "nbdev" in cell.get("metadata", {}):  # metadata-form directives: not for readers
                    cell["metadata"] = {k: v for k, v in cell["metadata"].items() if k != "nbdev"}
        else:
            dirs = {}
        if "default_exp" in dirs:
            default_exp = dirs["default_exp"].split()[0]
        if "hide" in dirs or dirs.get("include") == "false":
            continue
        if cell["cell_type"] == "code" and not src.strip() and not cell.get("outputs"):
            continue  # e.g. the `#| default_exp` cell: nothing left to show
        tags = list(cell.get("metadata", {}).get("tags", []))
        if dirs.get("echo") == "false":
            tags.append("remove-input")
        if dirs.get("output") == "false":
            tags.append("remove-output")
        if tags:
            cell["metadata"] = {**cell.get("metadata", {}), "tags": tags}
        exported = EXPORT_DIRECTIVES & set(dirs)
        if cell["cell_type"] == "code" and exported:
            module = (dirs[exported.pop()].split() or [default_exp])[0]
            if module:
                full = module if module.split(".")[0] == lib else f"{lib}.{module}"
                cells.append(_md_cell(_container("nbdev-export", f"Exported to `{full}`"), f"nbdev-export-{i}"))
        if cell["cell_type"] == "code":
            outputs = []
            for j, out in enumerate(cell.get("outputs", [])):
                data = out.get("data", {})
                if PLOTLY_MIME in data:
                    fig = data[PLOTLY_MIME]
                    fig = json.loads(_text(fig)) if not isinstance(fig, dict) else fig
                    html = _plotly_html(fig, f"plotly-{slug}-{i}-{j}")
                    out = {**out, "data": {"text/html": html}}
                outputs.append(out)
            cell["outputs"] = outputs
        cells.append(cell)
        if not colab_done and cell["cell_type"] == "markdown" and src.lstrip().startswith("# "):
            cells.append(_md_cell(_container("colab-link", f"[Open in Colab]({colab})"), "nbdev-colab-link"))
            colab_done = True
    return {**nb, "cells": cells}


def _on_source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    path = Path(app.env.doc2path(docname))
    if path.suffix != ".ipynb":
        return
    rel = path.relative_to(app.srcdir).as_posix()
    nb = rewrite_notebook(json.loads(source[0]), docname, rel, app.nbdev_book_settings)  # type: ignore[attr-defined]
    source[0] = json.dumps(nb)


# ---------------------------------------------------------------- plotly.js, served locally

def _on_page_context(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    # Only pages with a figure load the 4.7 MB plotly.js; it is a plain (non-deferred) head script,
    # so it is defined before the inline `Plotly.newPlot` calls in the body run.
    if "plotly-graph-div" in context.get("body", ""):
        app.add_js_file(PLOTLY_JS)


def _clean_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    # Sphinx 7 (the series Jupyter Book 1 pins) writes an inline script that an extension registers after
    # the builder starts twice: once with filename None, once with '' (sphinx-doc/sphinx#13402, fixed in
    # Sphinx 8.2). sphinx-thebe's `const THEBE_JS_URL = ...` then throws a SyntaxError on every page.
    # Runs last among html-page-context handlers; `script_files` is reset for each page by Sphinx.
    # Thebe (live code on a remote kernel) is off in _config.yml, yet Jupyter Book always loads
    # sphinx-thebe, whose loader names a CDN copy of thebe. Leave it out so no page refers to a CDN.
    thebe = app.config.html_theme_options.get("launch_buttons", {}).get("thebe", False)
    seen, unique = set(), []
    for js in context.get("script_files", []):
        if not thebe and ((js.filename or "").endswith("sphinx-thebe.js") or "THEBE_JS_URL" in js.attributes.get("body", "")):
            continue
        key = (js.filename or "", js.priority, tuple(sorted((k, str(v)) for k, v in js.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"][:] = unique


def _on_build_finished(app: Sphinx, exc: Exception | None) -> None:
    if exc is None and app.builder.format == "html":
        import plotly

        src = Path(plotly.__file__).parent / "package_data" / PLOTLY_JS
        copy_asset_file(str(src), str(Path(app.outdir) / "_static"))


# ---------------------------------------------------------------- execution report

def read_nbval_report(path: Path) -> list[dict[str, Any]]:
    "Per notebook: docname, cells, seconds, passed/failed/skipped cells, from pytest's JUnit XML."
    rows: dict[str, dict[str, Any]] = defaultdict(lambda: {"cells": 0, "seconds": 0.0, "passed": 0,
                                                           "failed": 0, "skipped": 0})
    for case in ET.parse(path).getroot().iter("testcase"):
        # nbval items are "<path>::Cell N"; JUnit's classname is that path with '/' written as '.'.
        classname = case.get("classname", "")
        if not classname.endswith(".ipynb"):
            continue
        row = rows[classname.removesuffix(".ipynb").replace(".", "/")]
        row["cells"] += 1
        row["seconds"] += float(case.get("time") or 0)
        if case.find("failure") is not None or case.find("error") is not None:
            row["failed"] += 1
        elif case.find("skipped") is not None:
            row["skipped"] += 1
        else:
            row["passed"] += 1
    return [{"docname": k, **v} for k, v in sorted(rows.items())]


class NbvalReport(SphinxDirective):
    "A table of each chapter's execution time and status from the last `make nbval` run."

    option_spec = {"path": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        rel = self.options.get("path", self.config.nbdev_book_nbval_report)
        path = Path(self.env.srcdir) / rel
        self.env.note_dependency(str(path))  # a new nbval run rebuilds this page
        if not path.exists():
            return [nodes.paragraph(text=f"No execution record yet: {rel} is written by `make nbval` "
                                         "(part of `make test`). Run it, then `make book`.")]
        rows = read_nbval_report(path)
        table = nodes.table(classes=["nbval-report"])
        group = nodes.tgroup(cols=4)
        table += group
        for width in (40, 10, 12, 38):
            group += nodes.colspec(colwidth=width)
        head, body = nodes.thead(), nodes.tbody()
        group += head
        group += body

        def add_row(parent: nodes.Element, cells: list[nodes.Node | str]) -> None:
            r = nodes.row()
            for c in cells:
                entry = nodes.entry()
                entry += c if isinstance(c, nodes.Node) else nodes.paragraph(text=c)
                r += entry
            parent += r

        add_row(head, ["Chapter", "Cells", "Seconds", "Status"])
        for r in rows:
            name: nodes.Node | str = r["docname"]
            if r["docname"] in self.env.found_docs:  # link with the chapter's own title
                para = nodes.paragraph()
                para += addnodes.pending_xref("", nodes.inline(text=r["docname"]), refdomain="std",
                                              reftype="doc", reftarget="/" + r["docname"],
                                              refdoc=self.env.docname, refexplicit=False, refwarn=True)
                name = para
            status = "passed" if not r["failed"] else "FAILED"
            add_row(body, [name, str(r["cells"]), f"{r['seconds']:.1f}",
                           f"{status} ({r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped)"])
        total = sum(r["seconds"] for r in rows)
        stamp = ET.parse(path).getroot().find("testsuite")
        when = stamp.get("timestamp") if stamp is not None else None
        when = datetime.fromisoformat(when).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M") if when else "?"
        note = nodes.paragraph(text=f"Total {total:.1f} s over {len(rows)} notebook{'s' if len(rows) != 1 else ''}; nbval run of {when} UTC, "
                                    f"read from {rel}.")
        return [table, note]


# ---------------------------------------------------------------- {chapter} role

class ChapterRole(SphinxRole):
    "``{chapter}`Title <nbs/*_topic>``` links the matching chapter(s) by their own titles, or reads 'Title (coming)'."

    def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
        has_title, title, pattern = split_explicit_title(self.text)
        matches = sorted(d for d in self.env.found_docs if fnmatch.fnmatchcase(d, pattern))
        if not matches:
            label = title if has_title else pattern
            return [nodes.inline(text=f"{label} (coming)", classes=["chapter-coming"])], []
        result: list[nodes.Node] = []
        for k, doc in enumerate(matches):
            if k:
                result.append(nodes.Text(", "))
            ref = addnodes.pending_xref(self.rawtext, refdomain="std", reftype="doc", reftarget="/" + doc,
                                        refdoc=self.env.docname, refexplicit=False, refwarn=True)
            ref += nodes.inline(text=doc, classes=["xref", "std", "std-doc"])
            result.append(ref)
        return result, []


def _on_env_get_outdated(app: Sphinx, env: Any, added: set[str], changed: set[str], removed: set[str]) -> list[str]:
    # A chapter appeared or disappeared: every page's navigation (and the syllabus's "(coming)" marks)
    # must be redone, not only the new page. Sphinx alone rewrites just the new page; the book is
    # small, so re-reading all of it costs seconds.
    return sorted(env.found_docs - removed) if added or removed else []


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("nbdev_book_nbval_report", "book/_build/nbval-report.xml", "env")
    app.connect("config-inited", _on_config_inited)
    app.connect("source-read", _on_source_read)
    app.connect("html-page-context", _on_page_context)
    app.connect("html-page-context", _clean_scripts, priority=900)
    app.connect("build-finished", _on_build_finished)
    app.add_directive("nbval-report", NbvalReport)
    app.add_role("chapter", ChapterRole())
    app.connect("env-get-outdated", _on_env_get_outdated)
    app.add_css_file("nbdev_book.css")
    # env_version from this file's content: editing the glue rebuilds the book, not just changed pages.
    env_version = int(hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8], 16)
    return {"version": __version__, "env_version": env_version, "parallel_read_safe": True,
            "parallel_write_safe": True}
