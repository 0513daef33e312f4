"""Browser test of the built course book (book/_build/html), in headless Debian
Chromium.

Every page is served from a local http.server and loaded with all requests that leave it
blocked and recorded. On every page: no JavaScript errors, no `#|` nbdev directive
visible, no request outside the book's own files; every plotly figure drew its SVG and a
hover over a heatmap shows its tooltip; typeset maths where the page has maths; each
chapter links to its notebook in Colab (and to its learner's notebook,
exercises/<chapter>.ipynb, exactly when that exists) and offers the .ipynb download;
every exercise solution (a cell tagged `solution` in the notebook) is folded behind a
"Show solution" toggle that reveals its code; every chapter that ends with a
{footbibliography} lists each work it cites. Build first with `make book`; `make
book-test` does both.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

import neural_stack

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "book" / "_build" / "html"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
COLAB = (
    "https://colab.research.google.com/github/neural-stack/neural-stack/blob/"
    f"v{neural_stack.__version__}/"
)
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _is_redirect(page: Path) -> bool:
    "Sphinx's root index.html is only a refresh to the first page of the book."
    return (
        page.read_text(encoding="utf-8")
        .lstrip()
        .startswith('<meta http-equiv="Refresh"')
    )


def _pages() -> list[str]:
    "Every page of the built book except redirects (test_root_redirects checks those)."
    if not HTML.is_dir():
        return []
    skip = {"_static", "_sources", "_images"}
    return sorted(
        p.relative_to(HTML).as_posix()
        for p in HTML.rglob("*.html")
        if not skip & set(p.relative_to(HTML).parts) and not _is_redirect(p)
    )


# {footcite}, {footcite:t}, ... `key1,key2`
FOOTCITE = re.compile(r"\{footcite(?::\w+)?\}`([^`]+)`")


def _cells(notebook: Path) -> list[dict]:
    return [
        {**c, "source": "".join(c["source"])}
        for c in json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    ]


def _solutions(notebook: Path) -> list[str]:
    "The code of the notebook's cells tagged `solution`."
    return [
        c["source"]
        for c in _cells(notebook)
        if "solution" in c["metadata"].get("tags", [])
    ]


def _cited(notebook: Path) -> set[str] | None:
    """The keys the notebook cites with {footcite}, if it has a {footbibliography} to
    list them."""
    markdown = [c["source"] for c in _cells(notebook) if c["cell_type"] == "markdown"]
    if not any("{footbibliography}" in src for src in markdown):
        return None
    return {
        key.strip()
        for src in markdown
        for keys in FOOTCITE.findall(src)
        for key in keys.split(",")
    }


PAGES = _pages()
CHAPTERS = [
    p
    for p in PAGES
    if p.startswith("nbs/") and (ROOT / p).with_suffix(".ipynb").exists()
]
# Read from the chapters' notebooks, not from the build: the book must show each of
# them.
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))
SOLUTIONS = {
    f"nbs/{nb.stem}.html": code for nb in NOTEBOOKS if (code := _solutions(nb))
}
CITED = {
    f"nbs/{nb.stem}.html": keys for nb in NOTEBOOKS if (keys := _cited(nb)) is not None
}


def _none_yet(what: str):
    """The single parameter of a check that has nothing to check yet: a visible skip
    saying so."""
    return [
        pytest.param(
            "<none>", marks=pytest.mark.skip(reason=f"no chapter in nbs/ {what} yet")
        )
    ]


needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set CHROMIUM)",
)
needs_book = pytest.mark.skipif(
    not PAGES, reason="book not built: run `make book` (book/_build/html is missing)"
)


@pytest.mark.skipif(
    os.environ.get("CI", "").lower() not in ("1", "true"),
    reason="outside CI a skip is allowed",
)
def test_ci_runs_the_browser_checks():
    # On a developer's machine the checks below may skip; in CI (CI=true) a skip would
    # hide them.
    assert Path(CHROMIUM).exists(), (
        f"no Chromium at {CHROMIUM}: .ci/run installs Debian's chromium"
    )
    assert PAGES, "the book was not built before the browser test: run `make book-test`"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output readable
        pass


@pytest.fixture(scope="module")
def base_url():
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(HTML))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed"
    )
    with sync_api.sync_playwright() as p:
        # executable_path: Debian's Chromium; Playwright never downloads a browser here.
        # Each launch gets a fresh temporary profile (user-data-dir), removed on close.
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def visit(browser, base_url):
    """Open a page with outside requests blocked; returns (page, js_errors,
    outside_requests)."""
    contexts = []

    def _visit(rel: str):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        outside: list[str] = []
        errors: list[str] = []

        def route(r):
            host = urlparse(r.request.url).hostname
            if host == "127.0.0.1":
                r.continue_()
            else:
                outside.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        page.on(
            "console",
            lambda msg: (
                errors.append(f"console.{msg.type}: {msg.text}")
                if msg.type == "error"
                else None
            ),
        )
        page.goto(base_url + rel, wait_until="load")
        # Ready when the web fonts are: the last requests a page makes. (Chromium's
        # "networkidle" never fires on some pages that have long finished loading.)
        page.evaluate("() => document.fonts.ready.then(() => true)")
        return page, errors, outside

    yield _visit
    for c in contexts:
        c.close()


def _check_plotly(page) -> None:
    expected = page.locator("div.plotly-graph-div").count()
    drawn = page.locator(".js-plotly-plot .main-svg").first
    if not expected:
        return
    drawn.wait_for(state="attached")
    figures = page.locator(".js-plotly-plot")
    assert figures.count() == expected, (
        f"{expected} plotly figures on the page, {figures.count()} drawn"
    )
    for k in range(expected):
        fig = figures.nth(k)
        assert fig.locator(".main-svg").count() > 0, f"figure {k} has no SVG"
        is_heatmap = fig.evaluate(
            "el => (el.data || []).some(t => t.type === 'heatmap')"
        )
        if not is_heatmap:
            continue
        fig.scroll_into_view_if_needed()
        box = fig.locator(".nsewdrag").first.bounding_box()
        assert box, f"figure {k}: no plot area to hover"
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        fig.locator(".hovertext").first.wait_for(state="visible", timeout=5_000)
        text = fig.locator(".hovertext").first.text_content()
        assert text and text.strip(), f"figure {k}: empty tooltip"
        page.mouse.move(0, 0)


@needs_chromium
@needs_book
def test_root_redirects_to_the_first_chapter(browser, base_url):
    page = browser.new_page()
    try:
        page.goto(base_url + "index.html")
        page.wait_for_url(base_url + "nbs/index.html")
        assert "nbs/index.html" in PAGES and page.locator("h1").count() >= 1
    finally:
        page.close()


@needs_chromium
@needs_book
@pytest.mark.parametrize("rel", PAGES or ["<none>"])
def test_page(visit, rel):
    page, errors, outside = visit(rel)
    body = page.inner_text("body")
    assert "#|" not in body, f"{rel}: nbdev directive visible"
    _check_plotly(page)
    if page.locator(".math").count():
        page.locator("mjx-container").first.wait_for(state="attached")
    assert not errors, f"{rel}: JavaScript errors: {errors}"
    assert not outside, f"{rel}: requests outside the book: {outside}"


@needs_chromium
@needs_book
@pytest.mark.parametrize("rel", CHAPTERS or ["<none>"])
def test_chapter_links(visit, rel):
    page, _, _ = visit(rel)
    notebook = rel.removesuffix(".html") + ".ipynb"
    colab = page.locator(f'a[href="{COLAB}{notebook}"]')
    assert colab.count() >= 1, f"{rel}: no Colab link to {notebook}"
    assert any(colab.nth(k).is_visible() for k in range(colab.count())), (
        f"{rel}: Colab link not visible"
    )
    download = page.locator('a[href$=".ipynb"]:not([href^="http"])')
    assert download.count() >= 1, f"{rel}: no .ipynb download link"
    exercises = f"exercises/{Path(notebook).name}"
    link = page.locator(f'a[href="{COLAB}{exercises}"]')
    if (ROOT / exercises).exists():
        assert link.count() == 1 and link.is_visible(), (
            f"{rel}: no visible Colab link to {exercises}"
        )
        assert link.inner_text().strip() == "Exercises in Colab"
    else:
        assert link.count() == 0 and "Exercises in Colab" not in page.inner_text(
            "body"
        ), f"{rel}: links to {exercises}, which does not exist"


@needs_chromium
@needs_book
@pytest.mark.parametrize(
    "rel", list(SOLUTIONS) or _none_yet("has a cell tagged `solution`")
)
def test_solutions_are_folded(visit, rel):
    page, errors, _ = visit(rel)
    solutions = SOLUTIONS[rel]
    folded = page.locator("div.cell.tag_solution details")
    assert folded.count() == len(solutions), (
        f"{rel}: {len(solutions)} solution cells, {folded.count()} folded"
    )
    for k, source in enumerate(solutions):
        toggle, code = (
            folded.nth(k).locator("summary"),
            folded.nth(k).locator("div.cell_input"),
        )
        assert not code.is_visible(), f"{rel}: solution {k} is not folded"
        assert toggle.inner_text().strip() == "Show solution"
        toggle.click()
        code.wait_for(state="visible", timeout=5_000)
        assert toggle.inner_text().strip() == "Hide solution"
        shown = code.inner_text().strip()
        assert shown and shown in source, (
            f"{rel}: solution {k} shows {shown!r}, not the solution's code"
        )
    assert not errors, f"{rel}: JavaScript errors: {errors}"


@needs_chromium
@needs_book
@pytest.mark.parametrize("rel", list(CITED) or _none_yet("has a {footbibliography}"))
def test_references_are_listed(visit, rel):
    page, _, _ = visit(rel)
    body = page.inner_text("body")
    assert "{footcite" not in body and "{footbibliography" not in body, (
        f"{rel}: citation markup shown as text"
    )
    notes = page.locator("aside.footnote-list aside.footnote")
    assert notes.count() == len(CITED[rel]), (
        f"{rel}: cites {sorted(CITED[rel])}, lists {notes.count()} works"
    )
    marks = page.locator("a.footnote-reference")
    assert marks.count() >= len(CITED[rel]), (
        f"{rel}: fewer citation marks than cited works"
    )
    for k in range(marks.count()):
        target = marks.nth(k).get_attribute("href") or ""
        assert (
            target.startswith("#")
            and page.locator(f"aside.footnote[id='{target[1:]}']").count() == 1
        ), (
            f"{rel}: citation mark {k} points to {target!r}, "
            "not to an entry of the reference list"
        )
    for k in range(notes.count()):
        assert notes.nth(k).locator("p").inner_text().strip(), (
            f"{rel}: reference {k} is empty"
        )


@needs_chromium
@needs_book
def test_search_finds_a_chapter(visit):
    page, errors, outside = visit("search.html?q=softmax")
    hits = page.locator("#search-results ul.search li a")
    hits.first.wait_for(state="attached")
    assert any(
        "nbs/" in (hits.nth(k).get_attribute("href") or "") for k in range(hits.count())
    )
    assert not errors and not outside


@needs_book
def test_chapters_are_in_the_book():
    """Every chapter notebook in nbs/ became a page (the toc globs them; none is
    silently left out)."""
    notebooks = sorted(p.stem for p in (ROOT / "nbs").glob("*.ipynb"))
    built = sorted(Path(p).stem for p in CHAPTERS)
    assert notebooks == built


@needs_chromium
@needs_book
def test_attention_explorer_controls_change_the_map(visit):
    # The explorer has no kernel behind it: its menu, buttons and slider must change
    # what the static page shows.
    rel = "nbs/06_visualization.html"
    assert rel in PAGES, f"{rel} is not in the book"
    page, errors, _ = visit(rel)
    page.locator(".js-plotly-plot .main-svg").first.wait_for(state="attached")
    figures = page.locator(".js-plotly-plot")
    found = [
        k
        for k in range(figures.count())
        if figures.nth(k).evaluate(
            "el => String(el.layout.title?.text ?? '').startsWith('Attention explorer')"
        )
    ]
    assert len(found) == 1, f"{rel}: {len(found)} attention explorers"
    explorer = figures.nth(found[0])
    explorer.scroll_into_view_if_needed()

    def view():
        return explorer.evaluate(
            "el => ({x: el.layout.xaxis.range.slice(),"
            " y: el.layout.yaxis.range.slice(),"
            " shown: el.data.flatMap((t, i) => t.visible === false ? [] : [i])})"
        )

    def changed(before: dict, picture: bytes, key: str) -> tuple[dict, bytes]:
        page.wait_for_timeout(300)  # plotly redraws asynchronously
        after, new_picture = view(), explorer.screenshot()
        assert after[key] != before[key], f"{key} unchanged: {before[key]}"
        assert new_picture != picture, f"the figure looks the same after changing {key}"
        return after, new_picture

    state, picture = view(), explorer.screenshot()
    explorer.locator("g.updatemenu-button", has_text="head 1").click()
    state, picture = changed(state, picture, "shown")

    header = explorer.locator("g.updatemenu-header").bounding_box()
    page.mouse.click(
        header["x"] + header["width"] / 2, header["y"] + header["height"] / 2
    )
    items = explorer.locator("g.updatemenu-dropdown-button")
    assert items.count() >= 2, "the image menu did not open"
    items.nth(items.count() - 1).click()
    state, picture = changed(state, picture, "x")

    rail = explorer.locator(".slider-rail-touch-rect").bounding_box()
    page.mouse.click(rail["x"] + 3, rail["y"] + rail["height"] / 2)  # the first layer
    changed(state, picture, "y")
    assert not errors, f"{rel}: JavaScript errors: {errors}"


@needs_book
def test_every_module_has_an_api_page():
    "Each public module of the package is a page of the API reference, and no other."
    sys.path.insert(0, str(ROOT / "book"))
    from nsbook.api import PAGES as API, public_modules

    built = sorted(Path(p).stem for p in PAGES if p.startswith(f"{API}/"))
    assert built == public_modules("neural_stack")


@needs_chromium
@needs_book
def test_api_page_shows_signatures_parameters_and_the_chapter(visit):
    page, errors, outside = visit("book/api/neural_stack.training.data.html")
    entry = page.locator('dl.py.function:has(dt[id$=".build_dataloaders"])')
    assert entry.count() == 1, "no entry for build_dataloaders"
    signature = entry.locator("dt").first.inner_text()
    assert "build_dataloaders(config: DataConfig, seed: int = 0" in signature
    assert entry.locator("dt a", has_text="DataConfig").count() == 1  # ours: a link
    params = entry.locator("dd li").all_inner_texts()
    assert any(text.startswith("seed (int, default 0)") for text in params)
    chapter = page.locator('a[href$="nbs/07_training_data.html"]').first
    assert "Training data" in chapter.inner_text()
    assert not errors and not outside


@needs_chromium
@needs_book
def test_the_index_lists_the_api(visit):
    page, _, _ = visit("genindex.html")
    link = page.locator("a", has_text="build_dataloaders()").first
    assert link.get_attribute("href").endswith(
        "neural_stack.training.data.html#neural_stack.training.data.build_dataloaders"
    )
