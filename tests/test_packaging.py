"""The distribution: the wheel carries every module of the package, and the package
matches its notebooks."""

import subprocess
import sys
import zipfile
from contextlib import nullcontext
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory, worker_id) -> Path:
    # pip builds in the source tree (build/, *.egg-info), so two builds at once, one per
    # pytest-xdist worker, collide. Workers share their base folder's parent: the first
    # one there builds the wheel, the others wait on the lock and take it.
    if worker_id == "master":  # no xdist: this run's own folder
        out, lock = tmp_path_factory.mktemp("wheel"), nullcontext()
    else:
        shared = tmp_path_factory.getbasetemp().parent
        out, lock = shared / "wheel", FileLock(str(shared / "wheel.lock"))
    with lock:
        if not list(out.glob("neural_stack-*.whl")):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "--no-deps",
                    "--quiet",
                    "--wheel-dir",
                    str(out),
                    str(ROOT),
                ],
                check=True,
            )
    (whl,) = out.glob("neural_stack-*.whl")
    return whl


def test_wheel_contains_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "neural_stack").rglob("*.py")
    }
    assert modules, "no modules found under neural_stack/"
    assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    assert not any(n.startswith(("tests/", "nbs/", "bench/")) for n in names)


def test_wheel_installs_and_imports(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--quiet",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    code = (
        "import neural_stack, neural_stack.models as m; "
        "assert neural_stack.__file__.startswith(%r), neural_stack.__file__; "
        "print(sorted(m.__all__))" % str(target)
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "MultiHeadAttention" in result.stdout
