"""Run `make` targets one after another, as `make test` does, and end with the time each took,
slowest first: where a run fails, the times of the steps that ran are still printed.

    python tools/steps.py [--report FILE] TARGET [TARGET ...]

`--report` also writes the times as JSON (bench/budget.py reads them)."""

import argparse
import json
import subprocess
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", metavar="TARGET")
    parser.add_argument("--report", metavar="FILE", help="also write the times as JSON")
    args = parser.parse_args(argv)
    times, status, failed = {}, 0, None
    for target in args.targets:
        start = time.perf_counter()
        status = subprocess.run(["make", "--no-print-directory", target]).returncode
        times[target] = time.perf_counter() - start
        if status:
            failed = target
            break
    total = sum(times.values())
    print(f"\n== make test: steps by time ({total / 60:.1f} min in all)")
    for target, seconds in sorted(times.items(), key=lambda item: -item[1]):
        print(f"  {target:<16} {seconds:7.0f} s  {seconds / total:4.0%}")
    if failed:
        print(f"  stopped: 'make {failed}' failed (exit {status})")
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"steps": times, "failed": failed}, f, indent=2)
    return status


if __name__ == "__main__":
    sys.exit(main())
