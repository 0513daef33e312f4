"""`nsbook.api`: the API reference, one page per module of the package.

When a build starts, every public module of the package (not a package `__init__`, not
a `_private` module) gets a MyST page in `book/api/`, written from the code as Sphinx's
autosummary writes its stubs: each name of the module's `__all__` as a Python-domain
entry (so that `genindex` lists it and other pages can link to it) with its signature,
its docstring (Markdown, as the chapters write them) and each parameter with its type,
default and docments comment; the page links to the chapters the module is exported
from. Types from other libraries render as plain text: the build is offline, with no
intersphinx inventories to resolve them against.

`undocumented` is the rule that `tests/test_api_reference.py` holds every public callable
to: each parameter is named in backticks in the docstring (or, for a method, its class's)
or has a docments comment.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import pkgutil
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from fastcore.docments import docments

from nsbook import extension_metadata

PAGES = "book/api"  # relative to the source folder, the repository root
# the marker nbdev writes above each exported cell: `# %% ../nbs/07_training_data.ipynb`
CELL_MARKER = re.compile(r"^# %% (?:\.\./)+(nbs/[^ ]+)\.ipynb")
MAX_DEFAULT = 40  # longer defaults show as `...` in a signature


def public_modules(package: str) -> list[str]:
    "Every module of `package` (by dotted name) that is neither private nor a package."
    root = importlib.import_module(package)
    return sorted(
        info.name
        for info in pkgutil.walk_packages(root.__path__, f"{package}.")
        if not info.ispkg and not info.name.rsplit(".", 1)[-1].startswith("_")
    )


def _comments(obj: Any) -> dict[str, str]:
    try:
        found = docments(obj, full=False)
    except (TypeError, OSError, SyntaxError):  # no source to read comments from
        return {}
    return {k: v for k, v in found.items() if v}


def _own_doc(obj: Any) -> str:
    "`obj`'s own docstring: not one inherited, not one that `dataclass` made up."
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
    if not doc or (inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(")):
        return ""
    return inspect.cleandoc(doc)


def _docstring(obj: Any, owner: type | None = None) -> str:
    """`obj`'s own docstring, with a class's own `__init__`'s; for a method of `owner`
    without one, the docstring of the method of this package that it overrides."""
    doc = _own_doc(obj)
    if inspect.isclass(obj):
        init = vars(obj).get("__init__")
        if inspect.isfunction(init) and _own_doc(init):
            doc = f"{doc}\n\n{_own_doc(init)}".strip()
    elif not doc and owner is not None:
        package = owner.__module__.split(".")[0]
        for base in owner.__mro__[1:]:
            overridden = vars(base).get(obj.__name__)
            if overridden is not None and base.__module__.split(".")[0] == package:
                return _own_doc(getattr(overridden, "__func__", overridden))
    return doc


def _parameters(obj: Any) -> list[inspect.Parameter]:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p for n, p in signature.parameters.items() if n not in ("self", "cls")]


def undocumented(obj: Any, owner: type | None = None) -> list[str]:
    """The parameters of the callable `obj` that neither its docstring names (in
    backticks, `*args` and `**kwargs` with their stars) nor a docments comment explains.
    For a method, the docstring of its class `owner` counts too: a hook's argument, the
    same for every hook, is explained once, where the hooks are."""
    doc, comments = _docstring(obj, owner), _comments(obj)
    doc += "\n\n" + (_docstring(owner) if owner is not None else "")
    return [
        p.name
        for p in _parameters(obj)
        if p.name not in comments and not re.search(rf"`\**{re.escape(p.name)}`", doc)
    ]


def public_callables(module: ModuleType) -> list[tuple[str, Any, type | None]]:
    """The functions and classes of `module`'s `__all__` that it defines, and their
    public methods: (qualified name, callable, its class or None)."""
    found = []
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            found.append((name, obj, None))
        elif inspect.isclass(obj):
            found.append((name, obj, None))
            for key, value in vars(obj).items():
                function = getattr(value, "__func__", value)  # class/static methods
                if not key.startswith("_") and inspect.isfunction(function):
                    found.append((f"{name}.{key}", function, obj))
    return found


def _source_line(obj: Any) -> int | None:
    try:
        return inspect.getsourcelines(obj)[1]
    except (TypeError, OSError):
        return None


def _constant_comments(source: str) -> dict[str, tuple[int, str]]:
    """Module-level assignments: the line of each name and its comment, the one at the
    end of its line or else the block of comment lines right above it."""
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found = {}
    for node in ast.parse(source).body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        for target in targets:
            if not isinstance(target, ast.Name):
                continue
            text, above, block = comments.get(node.lineno, ""), node.lineno - 1, []
            while (
                not text and above in comments and lines[above - 1].lstrip()[:1] == "#"
            ):
                block.insert(0, comments[above])
                above -= 1
            text = text or " ".join(block)
            found[target.id] = (node.lineno, text)
    return found


def _default(value: Any) -> str:
    "A default as valid Python for a signature: its repr if short and literal."
    text = repr(value)
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return "..."
    return text if len(text) <= MAX_DEFAULT else "..."


def _annotation(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def signature(obj: Any) -> str:
    "`obj`'s parameters and return type as a Python signature, without `self`."
    try:
        full = inspect.signature(obj)
    except (TypeError, ValueError):
        return "()"
    parts, stars_done = [], False
    kinds = inspect.Parameter
    for p in _parameters(obj):
        if p.kind is kinds.KEYWORD_ONLY and not stars_done:
            parts.append("*")
        if p.kind in (kinds.VAR_POSITIONAL, kinds.KEYWORD_ONLY):
            stars_done = True
        text = {kinds.VAR_POSITIONAL: "*", kinds.VAR_KEYWORD: "**"}.get(p.kind, "")
        text += p.name
        if annotation := _annotation(p.annotation):
            text += f": {annotation}"
        if p.default is not kinds.empty:
            text += (
                f" = {_default(p.default)}" if annotation else f"={_default(p.default)}"
            )
        parts.append(text)
    returns = "" if inspect.isclass(obj) else _annotation(full.return_annotation)
    return f"({', '.join(parts)})" + (f" -> {returns}" if returns else "")


def _parameter_list(obj: Any) -> str:
    "Each parameter of `obj` on a line: name, type, default and docments comment."
    comments, rows = _comments(obj), []
    for p in _parameters(obj):
        star = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        facts = [f"`{a}`"] if (a := _annotation(p.annotation)) else []
        if p.default is not p.empty:
            facts.append(f"default `{_default(p.default)}`")
        row = f"- `{star}{p.name}`" + (f" ({', '.join(facts)})" if facts else "")
        rows.append(row + (f": {comments[p.name]}" if p.name in comments else ""))
    return "\n".join(rows)


@dataclass
class Entry:
    "One documented name: its directive, signature, text and nested entries."

    directive: str  # py:function, py:class, py:method, py:property, py:data
    name: str
    signature: str = ""
    options: list[str] = field(default_factory=list)
    body: str = ""
    children: list[Entry] = field(default_factory=list)

    def render(self) -> str:
        "The entry as a MyST colon-fenced directive, its fence longer than its children's."
        fence = ":" * (2 + self.levels())
        head = f"{fence}{{{self.directive}}} {self.name}{self.signature}"
        body = "\n\n".join(
            p for p in [self.body, *(c.render() for c in self.children)] if p
        )
        return "\n".join(
            [head, *self.options, "", body, fence]
            if body
            else [head, *self.options, fence]
        )

    def levels(self) -> int:
        "1 for an entry alone, one more for each level of entries nested in it."
        return 1 + max((c.levels() for c in self.children), default=0)


def _body(obj: Any, owner: type | None = None) -> str:
    "The docstring and the parameters of `obj` (`owner`: the class of a method)."
    params = _parameter_list(obj)
    parts = [_docstring(obj, owner), params and f"**Parameters**\n\n{params}"]
    return "\n\n".join(p for p in parts if p)


def _member_entry(name: str, value: Any, owner: type) -> Entry | None:
    "A public method or property defined in a class body (or added by `@patch`)."
    if isinstance(value, property):
        getter = value.fget
        returns = _annotation(inspect.signature(getter).return_annotation)
        options = [f":type: {returns}"] if returns else []
        return Entry("py:property", name, "", options, _own_doc(getter))
    options = []
    if isinstance(value, classmethod):
        options, value = [":classmethod:"], value.__func__
    elif isinstance(value, staticmethod):
        options, value = [":staticmethod:"], value.__func__
    if not inspect.isfunction(value):
        return None
    return Entry("py:method", name, signature(value), options, _body(value, owner))


def _entry(module: ModuleType, name: str) -> tuple[int, Entry]:
    "The entry of `module`'s `name` and the line that defines it."
    obj = getattr(module, name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        source = Path(module.__file__).read_text()
        line, comment = _constant_comments(source).get(name, (0, ""))
        options = [f":value: {v}"] if (v := _default(obj)) != "..." else []
        return line, Entry("py:data", name, "", options, comment)
    line, body = _source_line(obj) or 0, _body(obj)
    if inspect.isfunction(obj):
        return line, Entry("py:function", name, signature(obj), [], body)
    entry = Entry("py:class", name, signature(obj), [], body)
    members = vars(obj).items()
    found = (_member_entry(k, v, obj) for k, v in members if not k.startswith("_"))
    entry.children = [m for m in found if m is not None]
    return line, entry


def module_page(name: str) -> str:
    """The MyST page of module `name`: a heading, the chapters whose cells it is
    exported from, and an entry for each name of its `__all__`, in source order."""
    module = importlib.import_module(name)
    lines = Path(module.__file__).read_text().splitlines()
    chapters = dict.fromkeys(m[1] for t in lines if (m := CELL_MARKER.match(t)))
    links = " and ".join(f"{{doc}}`/{chapter}`" for chapter in chapters)
    entries = sorted(
        (_entry(module, n) for n in getattr(module, "__all__", [])),
        key=lambda pair: pair[0],
    )
    parts = [f"# {name}", f"```{{py:module}} {name}\n```"]
    parts += [f"Built in {links}." if links else ""]
    parts += [entry.render() for _, entry in entries]
    return "\n\n".join(p for p in parts if p) + "\n"


def write_pages(srcdir: Path, package: str) -> list[Path]:
    """Write one page per public module of `package` into `srcdir / PAGES` and remove
    the pages of modules that no longer exist; returns the pages."""
    folder = srcdir / PAGES
    folder.mkdir(parents=True, exist_ok=True)
    pages = {
        folder / f"{name}.md": module_page(name) for name in public_modules(package)
    }
    for stale in set(folder.glob("*.md")) - set(pages):
        stale.unlink()
    for path, text in pages.items():
        if not path.exists() or path.read_text() != text:  # unchanged: not re-read
            path.write_text(text)
    return sorted(pages)


def _write(app, config) -> None:
    write_pages(Path(app.srcdir), config.nsbook_api_package)


def _external_type(app, env, node, contnode):
    """A type from another library in a signature: plain text, not a broken link."""
    if node.get("refdomain") != "py" or node.get("reftype") not in ("class", "obj"):
        return None
    target = node.get("reftarget", "")
    package = app.config.nsbook_api_package
    ours = env.get_domain("py").objects
    if target.startswith(package) or any(
        key.endswith(f".{target}") or key == target for key in ours
    ):
        return None  # ours: unresolved is a real error
    return contnode


def setup(app) -> dict[str, Any]:
    app.add_config_value("nsbook_api_package", "neural_stack", "env")
    app.connect("config-inited", _write, priority=400)  # before the toc reads its globs
    app.connect("missing-reference", _external_type)
    return extension_metadata()
