"""The `{chapter}` role of the curriculum pages, and whole-book rebuilds when chapters
come and go.

The syllabus names chapters that are not written yet.
`` {chapter}`Title <nbs/*_topic>` `` links every chapter whose name matches the pattern,
by its own title, or reads "Title (coming)" while none exists: the syllabus never holds
a broken link, and picks up a new chapter by itself.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxRole
from sphinx.util.nodes import split_explicit_title

from nsbook import extension_metadata


def resolve(text: str, docnames: Iterable[str]) -> tuple[str, list[str]]:
    """The role's text (`Title <pattern>` or `pattern`) as its label and the sorted
    docnames that match."""
    _, title, pattern = split_explicit_title(text)
    return title, sorted(d for d in docnames if fnmatch.fnmatchcase(d, pattern))


class ChapterRole(SphinxRole):
    """``{chapter}`Title <nbs/*_topic>``` links the matching chapter(s) by their own
    titles, or reads 'Title (coming)'."""

    def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
        title, matches = resolve(self.text, self.env.found_docs)
        if not matches:
            return [
                nodes.inline(text=f"{title} (coming)", classes=["chapter-coming"])
            ], []
        result: list[nodes.Node] = []
        for k, doc in enumerate(matches):
            if k:
                result.append(nodes.Text(", "))
            ref = addnodes.pending_xref(
                self.rawtext,
                refdomain="std",
                reftype="doc",
                reftarget="/" + doc,
                refdoc=self.env.docname,
                refexplicit=False,
                refwarn=True,
            )
            ref += nodes.inline(text=doc, classes=["xref", "std", "std-doc"])
            result.append(ref)
        return result, []


def _on_env_get_outdated(
    app: Sphinx, env: Any, added: set[str], changed: set[str], removed: set[str]
) -> list[str]:
    # A chapter appeared or disappeared: every page's navigation (and the syllabus's
    # "(coming)" marks) must be redone, not only the new page. Sphinx alone rewrites
    # just the new page; the book is small, so re-reading all of it costs seconds.
    return sorted(env.found_docs - removed) if added or removed else []


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_role("chapter", ChapterRole())
    app.connect("env-get-outdated", _on_env_get_outdated)
    return extension_metadata()
