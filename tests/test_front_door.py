"""The front door: every install, clone and Colab link names the repository of
pyproject.toml at the release tag of the package's version (tools/release.py)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import neural_stack

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("release", ROOT / "tools" / "release.py")
release = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release)


def test_every_reference_names_the_repository_at_the_release():
    assert release.repository() == "https://github.com/neural-stack/neural-stack"
    assert release.version() == neural_stack.__version__
    assert release.problems() == []
    # the check sees every chapter's install cell, the README's lines and the clones
    installs = clones = 0
    for path in release.files():
        text = path.read_text()
        installs += len(release.INSTALL.findall(text))
        clones += len(release.CLONE.findall(text))
    chapters = len(list((ROOT / "nbs").glob("*.ipynb")))
    assert installs >= chapters + 2 and clones >= 2, (installs, clones)


def test_a_moved_url_or_ref_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(release, "ROOT", tmp_path)
    (tmp_path / "README.md").write_text(
        "pip install 'neural-stack @ git+https://github.com/neural-stack/neural-stack'\n"
        "pip install 'x @ git+https://github.com/someone/fork@v0.1.0'\n"
        "pip install 'x @ git+https://github.com/neural-stack/neural-stack@v0.1.0'\n"
        "git clone -q --depth 1 https://github.com/neural-stack/neural-stack /content\n"
        "git clone --branch v0.1.0 https://github.com/neural-stack/neural-stack\n"
        "git clone -q --depth=1 -b v0.0.9 https://github.com/neural-stack/neural-stack\n"
    )
    found = release.problems("https://github.com/neural-stack/neural-stack", "v0.1.0")
    assert [line.split(": ", 1)[1].split(" (")[0] for line in found] == [
        "git+https://github.com/neural-stack/neural-stack",
        "git+https://github.com/someone/fork@v0.1.0",
        "git clone -q --depth 1 https://github.com/neural-stack/neural-stack",
        "git clone -q --depth=1 -b v0.0.9 https://github.com/neural-stack/neural-stack",
    ]


def test_set_moves_the_version_and_every_reference(tmp_path):
    copy = tmp_path / "repo"
    for part in ("pyproject.toml", "README.md", "tools", "course_docs", "nbs"):
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, copy / part)
        else:
            copy.mkdir(exist_ok=True)
            shutil.copy(source, copy / part)
    (copy / "neural_stack").mkdir()
    shutil.copy(ROOT / "neural_stack" / "__init__.py", copy / "neural_stack")
    done = subprocess.run(
        [sys.executable, str(copy / "tools" / "release.py"), "set", "9.8.7"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "at v9.8.7" in done.stdout
    assert (
        '__version__ = "9.8.7"' in (copy / "neural_stack" / "__init__.py").read_text()
    )
    chapter = (copy / "nbs" / "13_experiments.ipynb").read_text()
    assert "neural-stack@v9.8.7" in chapter and "-b v9.8.7 https:" in chapter
    bad = subprocess.run(
        [sys.executable, str(copy / "tools" / "release.py"), "set", "1.0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "expected X.Y.Z" in bad.stderr
