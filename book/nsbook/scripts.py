"""The pages' JavaScript: live plotly figures from local files, each script once,
no CDN loaders.

The notebooks store figures as plotly's own mime type
(`application/vnd.plotly.v1+json`), which JupyterLab and Colab draw natively but myst-nb
does not. `live_plotly`, one of the processors of the notebook rewrite
(`nsbook.notebooks`), turns each into HTML that calls `Plotly.newPlot`; the pages that
have a figure load the plotly.js that ships inside the installed plotly package, copied
into the site's `_static/`. Like MathJax (sphinx-mathjax-offline), nothing comes from a
CDN: the book works offline and shows the plotly version the notebooks were tested with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.util.fileutil import copy_asset_file

from nsbook import extension_metadata

PLOTLY_MIME = "application/vnd.plotly.v1+json"
PLOTLY_JS = "plotly.min.js"


def live_plotly(cell) -> None:
    """Notebook processor: each plotly figure among the cell's outputs becomes live HTML
    (no plotly.js inside)."""
    import plotly.io as pio

    for j, out in enumerate(cell.get("outputs", [])):
        fig = out.get("data", {}).get(PLOTLY_MIME)
        if fig is not None:
            # include_plotlyjs=False: the page loads _static/plotly.min.js once (see
            # _load_plotly_js).
            html = pio.to_html(
                fig,
                include_plotlyjs=False,
                full_html=False,
                validate=False,
                div_id=f"plotly-{cell.id}-{j}",
                config={"displaylogo": False, "responsive": True},
            )
            out["data"] = {"text/html": html}


def _load_plotly_js(
    app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any
) -> None:
    # Only pages with a figure load the 4.7 MB plotly.js; it is a plain (non-deferred)
    # head script, so it is defined before the inline `Plotly.newPlot` calls in the body
    # run.
    if "plotly-graph-div" in context.get("body", ""):
        app.add_js_file(PLOTLY_JS)


def _clean_scripts(
    app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any
) -> None:
    # Sphinx 7 (the series Jupyter Book 1 pins) writes an inline script that an
    # extension registers after the builder starts twice: once with filename None, once
    # with '' (sphinx-doc/sphinx#13402, fixed in Sphinx 8.2). sphinx-thebe's
    # `const THEBE_JS_URL = ...` then throws a SyntaxError on every page.
    # Runs last among html-page-context handlers; `script_files` is reset for each page
    # by Sphinx.
    # Thebe (live code on a remote kernel) is off in _config.yml, yet Jupyter Book
    # always loads sphinx-thebe, whose loader names a CDN copy of thebe. Leave it out
    # so no page refers to a CDN.
    thebe = app.config.html_theme_options.get("launch_buttons", {}).get("thebe", False)
    seen, unique = set(), []
    for js in context.get("script_files", []):
        if not thebe and (
            (js.filename or "").endswith("sphinx-thebe.js")
            or "THEBE_JS_URL" in js.attributes.get("body", "")
        ):
            continue
        key = (
            js.filename or "",
            js.priority,
            tuple(sorted((k, str(v)) for k, v in js.attributes.items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"][:] = unique


def _copy_plotly_js(app: Sphinx, exc: Exception | None) -> None:
    if exc is None and app.builder.format == "html":
        import plotly

        src = Path(plotly.__file__).parent / "package_data" / PLOTLY_JS
        copy_asset_file(str(src), str(Path(app.outdir) / "_static"))


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("html-page-context", _load_plotly_js)
    app.connect("html-page-context", _clean_scripts, priority=900)
    app.connect("build-finished", _copy_plotly_js)
    return extension_metadata()
