"""The front door: every place that installs, clones or links the repository names the
repository URL of `pyproject.toml` ([project.urls] Repository) at the release tag
`v<version>` (`neural_stack.__version__`), so that a Colab reader runs the code the chapter
was tested with, not a moving `main`.

    python tools/release.py check          # list every reference that disagrees; exit 1 if any
    python tools/release.py set 0.2.0      # write the version and move every reference to v0.2.0

Cutting a release is described in README.md ("Cutting a release").
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSION_FILE = ROOT / "neural_stack" / "__init__.py"
# The files a reader meets: chapters and their exercise copies, the README, the syllabus.
SOURCES = ("nbs/*.ipynb", "exercises/*.ipynb", "README.md", "course_docs/*.md")
VERSION = re.compile(r'^__version__ = "(\d+\.\d+\.\d+)"$', re.M)
# `pip install '... @ git+URL@REF'` and `git clone ... [--branch REF | -b REF] URL`
INSTALL = re.compile(
    r"git\+(?P<url>https://github\.com/[\w.-]+/[\w.-]+?)(?:\.git)?(?:@(?P<ref>[\w.-]+))?(?=[\"'\s]|\\)"
)
BRANCH = re.compile(r"(?:--branch|-b)[ =]([\w.-]+)")
CLONE = re.compile(
    r"git clone(?P<opts>(?: -[-\w=]+(?: (?!https)[\w.-]+)?)*) (?P<url>https://github\.com/[\w.-]+/[\w.-]+)"
)


def repository() -> str:
    "The repository URL, from pyproject.toml."
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"].rstrip("/")


def version() -> str:
    "The package version, from neural_stack/__init__.py."
    match = VERSION.search(VERSION_FILE.read_text())
    if match is None:
        raise SystemExit(f'{VERSION_FILE}: no line __version__ = "X.Y.Z"')
    return match.group(1)


def files() -> list[Path]:
    return sorted(p for pattern in SOURCES for p in ROOT.glob(pattern))


def problems(url: str | None = None, ref: str | None = None) -> list[str]:
    """Every install or clone of the repository that names another URL or another ref
    than `url` at `ref` (default: pyproject's URL at v<version>), as 'file: text'."""
    url, ref = url or repository(), ref or f"v{version()}"
    found = []
    for path in files():
        text = path.read_text()
        for m in INSTALL.finditer(text):
            if m["url"] != url or m["ref"] != ref:
                found.append(
                    f"{path.relative_to(ROOT)}: {m[0]} (expected git+{url}@{ref})"
                )
        for m in CLONE.finditer(text):
            branch = BRANCH.search(m["opts"])
            if m["url"] != url or branch is None or branch[1] != ref:
                found.append(
                    f"{path.relative_to(ROOT)}: {m[0]} (expected --branch {ref} {url})"
                )
    return found


def set_release(new_version: str) -> None:
    "Write `new_version` and point every install and clone at `v<new_version>`."
    if not re.fullmatch(r"\d+\.\d+\.\d+", new_version):
        raise SystemExit(f"version={new_version!r}; expected X.Y.Z")
    url, ref = repository(), f"v{new_version}"
    VERSION_FILE.write_text(
        VERSION.sub(f'__version__ = "{new_version}"', VERSION_FILE.read_text())
    )

    def install(m: re.Match) -> str:
        return f"git+{url}@{ref}"

    def clone(m: re.Match) -> str:
        opts = m["opts"]
        if BRANCH.search(opts):
            opts = BRANCH.sub(lambda b: f"{b[0][: -len(b[1])]}{ref}", opts)
        else:
            opts += f" --branch {ref}"
        return f"git clone{opts} {url}"

    for path in files():
        text = path.read_text()
        new = CLONE.sub(clone, INSTALL.sub(install, text))
        if new != text:
            path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="list references to another URL or ref; exit 1 if any")
    set_parser = sub.add_parser(
        "set", help="write the version and move every reference"
    )
    set_parser.add_argument("version", help="X.Y.Z; references become vX.Y.Z")
    args = parser.parse_args(argv)
    if args.command == "set":
        set_release(args.version)
    found = problems()
    for line in found:
        print(line)
    if not found:
        print(f"every install and clone names {repository()} at v{version()}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
