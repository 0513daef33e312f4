"""The `{nbval-report}` directive: each chapter's execution time and status from the
last nbval run.

The book does not execute notebooks; `make nbval` does, strictly, and writes pytest's
JUnit XML. This directive turns that report into a table, so the book states how long
each chapter took and whether every cell still produced exactly the outputs it shows.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from nsbook import extension_metadata


def read_nbval_report(path: Path) -> list[dict[str, Any]]:
    """Per notebook: docname, cells, seconds, passed/failed/skipped cells, from pytest's
    JUnit XML."""
    rows: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"cells": 0, "seconds": 0.0, "passed": 0, "failed": 0, "skipped": 0}
    )
    for case in ET.parse(path).getroot().iter("testcase"):
        # nbval items are "<path>::Cell N"; JUnit's classname is that path with '/'
        # written as '.'.
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
    """A table of each chapter's execution time and status from the last `make nbval`
    run."""

    option_spec = {"path": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        rel = self.options.get("path", self.config.nsbook_nbval_report)
        path = Path(self.env.srcdir) / rel
        self.env.note_dependency(str(path))  # a new nbval run rebuilds this page
        if not path.exists():
            return [
                nodes.paragraph(
                    text=f"No execution record yet: {rel} is written by `make nbval` "
                    "(part of `make test`). Run it, then `make book`."
                )
            ]
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
                para += addnodes.pending_xref(
                    "",
                    nodes.inline(text=r["docname"]),
                    refdomain="std",
                    reftype="doc",
                    reftarget="/" + r["docname"],
                    refdoc=self.env.docname,
                    refexplicit=False,
                    refwarn=True,
                )
                name = para
            status = "passed" if not r["failed"] else "FAILED"
            add_row(
                body,
                [
                    name,
                    str(r["cells"]),
                    f"{r['seconds']:.1f}",
                    f"{status} ({r['passed']} passed, {r['failed']} failed, "
                    f"{r['skipped']} skipped)",
                ],
            )
        total = sum(r["seconds"] for r in rows)
        stamp = ET.parse(path).getroot().find("testsuite")
        when = stamp.get("timestamp") if stamp is not None else None
        when = (
            datetime.fromisoformat(when)
            .astimezone(timezone.utc)
            .strftime("%Y-%m-%d %H:%M")
            if when
            else "?"
        )
        note = nodes.paragraph(
            text=f"Total {total:.1f} s over {len(rows)} notebook"
            f"{'s' if len(rows) != 1 else ''}; nbval run of {when} UTC, "
            f"read from {rel}."
        )
        return [table, note]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("nsbook_nbval_report", "book/_build/nbval-report.xml", "env")
    app.add_directive("nbval-report", NbvalReport)
    return extension_metadata()
