"""The API reference (book/nsbook/api.py): every parameter of the public API is
documented, and each module's page carries its names' signatures, docstrings and
parameters, without building the book (tests/test_book.py checks the built pages)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book"))

from nsbook.api import (  # noqa: E402
    module_page,
    public_callables,
    public_modules,
    signature,
    undocumented,
    write_pages,
)

MODULES = public_modules("neural_stack")


def test_the_public_modules_are_the_packages_modules():
    files = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "neural_stack").rglob("*.py")
        if not p.name.startswith("_")
    }
    assert MODULES == sorted(files)
    assert "neural_stack.training.data" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_every_parameter_of_the_public_api_is_documented(name):
    module = importlib.import_module(name)
    found = public_callables(module)
    assert found or name.endswith("cli")  # the CLI's module exports only main()
    gaps = {
        qualified: missing
        for qualified, obj, owner in found
        if (missing := undocumented(obj, owner))
    }
    assert not gaps, f"{name}: parameters no docstring or comment explains: {gaps}"


def documented(a: int, b: int = 2, *rest: int, **options: str) -> int:
    "Add `a` and `b`; `*rest` and `**options` are ignored."
    return a + b


def commented(
    a: int,  # the first number
    b: int = 0,
) -> int:
    "Nothing about the second."
    return a + b


class Hooks:
    "Hooks that all receive `state`."

    def on_begin(self, state: dict, step: int) -> None:
        "Start."

    def on_end(self, state: dict) -> None:
        "End, with `state` as the run left it."


class Quiet(Hooks):
    def on_end(self, state: dict) -> None:
        pass


def test_undocumented_names_each_parameter_nobody_explains():
    assert undocumented(documented) == []
    assert undocumented(commented) == ["b"]  # a comment documents `a`
    assert undocumented(Hooks.on_begin) == ["state", "step"]
    assert undocumented(Hooks.on_begin, Hooks) == ["step"]  # the class names `state`
    assert undocumented(Quiet.on_end, Quiet) == []  # the docstring it overrides


def test_signature_is_valid_python_with_literal_defaults():
    assert signature(documented) == (
        "(a: int, b: int = 2, *rest: int, **options: str) -> int"
    )

    def keyword_only(x, *, scale: float = 1.5, where=Path("."), many=tuple(range(30))):
        pass

    assert signature(keyword_only) == (
        "(x, *, scale: float = 1.5, where=..., many=...)"  # a Path, a long tuple
    )
    assert signature(Hooks.on_begin) == "(state: dict, step: int) -> None"  # no self


def test_a_module_page_has_its_names_signatures_and_chapter():
    page = module_page("neural_stack.training.data")
    assert page.startswith("# neural_stack.training.data\n")
    assert "```{py:module} neural_stack.training.data\n```" in page
    assert "Built in {doc}`/nbs/07_training_data`." in page
    assert ":::{py:function} build_dataloaders(config: DataConfig, seed: int = 0" in (
        page
    )
    # a class with methods: its fence is longer than theirs
    resize = page.split("::::{py:class} PortableResize(size: int)\n")[1]
    resize = resize.split("\n::::\n")[0]
    assert ":::{py:method} forward(images: Tensor) -> Tensor" in resize
    assert "- `size` (`int`)" in resize
    assert ":::{py:data} MAX_IMG_SIZE\n:value: 1024\n" in page
    # names appear in the order of the source
    assert page.index("DataConfig(") < page.index("build_dataloaders(")


def test_write_pages_replaces_stale_pages_and_leaves_current_ones(tmp_path):
    folder = tmp_path / "book" / "api"
    folder.mkdir(parents=True)
    (folder / "neural_stack.gone.md").write_text("# a module that was removed\n")
    pages = write_pages(tmp_path, "neural_stack")
    assert [p.stem for p in pages] == MODULES
    assert not (folder / "neural_stack.gone.md").exists()
    page = folder / "neural_stack.files.md"
    before = page.stat().st_mtime_ns
    write_pages(tmp_path, "neural_stack")
    assert page.stat().st_mtime_ns == before  # unchanged pages are not rewritten
