"""The README's test budgets, measured: `make test` on a fresh clone of the committed HEAD, its
virtual environment included, and every chapter under nbval. A benchmark, not a test: it runs for
as long as `make test` does and reports against the budgets; the exit status is 1 where one is
exceeded.

    python bench/budget.py [--keep]

`--keep` leaves the clone (its path is printed) for a look at the logs."""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

MAKE_TEST_MINUTES = 25  # from a fresh clone, venv included, on two cores (goal: 15)
CHAPTER_SECONDS = 90  # every chapter under strict nbval


def chapter_seconds(report: Path) -> dict[str, float]:
    "The seconds of each notebook in a pytest junit report of `pytest --nbval`."
    seconds = defaultdict(float)
    for case in ET.parse(report).iter("testcase"):
        notebook = case.get("classname", "").removeprefix("nbs.")
        seconds[notebook] += float(case.get("time", 0))
    return dict(seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the clone")
    args = parser.parse_args(argv)
    top = Path(__file__).resolve().parents[1]
    where = Path(tempfile.mkdtemp(prefix="budget-"))
    clone = where / "repo"
    subprocess.run(["git", "clone", "-q", str(top), str(clone)], check=True)
    report = where / "steps.json"
    start = time.perf_counter()
    status = subprocess.run(
        ["make", "test", f"STEPS_REPORT={report}"], cwd=clone
    ).returncode
    minutes = (time.perf_counter() - start) / 60
    steps = json.loads(report.read_text())["steps"] if report.exists() else {}
    nbval = clone / "book" / "_build" / "nbval-report.xml"
    chapters = chapter_seconds(nbval) if nbval.exists() else {}
    over = []
    print(f"\n== budgets (commit {git_head(clone)})")
    print(
        f"make test from a fresh clone: {minutes:.1f} min (budget {MAKE_TEST_MINUTES})"
    )
    if minutes > MAKE_TEST_MINUTES:
        over.append("make test")
    for step, seconds in steps.items():
        print(f"  {step:<16} {seconds:7.0f} s")
    print(f"chapters under nbval (budget {CHAPTER_SECONDS} s each):")
    for notebook, seconds in sorted(chapters.items(), key=lambda item: -item[1]):
        flag = "  OVER" if seconds > CHAPTER_SECONDS else ""
        print(f"  {notebook:<36} {seconds:6.1f} s{flag}")
        if flag:
            over.append(notebook)
    if status:
        print(f"make test failed (exit {status}); the figures above are partial")
    if not chapters:
        print("no nbval report: the chapters were not measured")
    if args.keep:
        print(f"the clone: {clone}")
    else:
        shutil.rmtree(where, ignore_errors=True)
    if over:
        print("over budget: " + ", ".join(over))
    return 1 if status or over or not chapters else 0


def git_head(repo: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=repo,
        capture_output=True,
        text=True,
    ).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
