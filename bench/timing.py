"""The benchmarks' timing harness: interleaved rounds, medians and paired ratios."""

import statistics
import time


def timed(fn, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def bench(variants: dict, rounds: int, iters: int) -> tuple[dict, dict]:
    """Median time per call of each variant, and the median over rounds of each
    variant's time relative to the first one's in the same round. The order rotates
    between rounds (A B C, B C A, C A B, then reversed) so that every variant takes
    every position, and follows every other, equally often."""
    for fn in variants.values():  # warm-up
        timed(fn, 2)
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order if (r // len(names)) % 2 == 0 else order[::-1]:
            times[name].append(timed(variants[name], iters))
    base = times[names[0]]
    medians = {name: statistics.median(t) for name, t in times.items()}
    paired = {
        name: statistics.median(a / b for a, b in zip(t, base))
        for name, t in times.items()
    }
    return medians, paired
