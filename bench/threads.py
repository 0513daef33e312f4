"""Benchmark: the CPU thread policy behind `threads: auto`.

Training steps of the course's small ViTs on one thread against PyTorch's default
(one thread per core), on a quiet machine and on one where other processes keep
every core busy (one spinning process per core, as a second run, a notebook or a
loaded laptop would). Variants alternate in interleaved rounds (bench/timing.py);
the ratio is the median over rounds of default / one thread in the same round, so a
ratio above 1 means that one thread is faster.

    python bench/threads.py [--rounds 5] [--steps 10]
"""

import argparse
import multiprocessing
import os
from contextlib import contextmanager

import torch

from neural_stack.training import apply_overrides, build_dataloaders, build_from_config
from neural_stack.training.config import TrainConfig, load_config
from timing import bench

CONFIGS = {  # name: (config file or None for the default, overrides)
    "digits ViT (4 blocks, width 64), batch 64": (None, []),
    "mnist-5k ViT (configs/vit_mnist5k.yaml)": ("configs/vit_mnist5k.yaml", []),
}


def _spin() -> None:
    while True:
        pass


@contextmanager
def busy_cores(n: int):
    "`n` processes that spin on the CPU while inside: a loaded machine."
    procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
            p.join()


def steps(config: TrainConfig, threads: int, count: int):
    "A function that trains `count` steps of `config` on `threads` CPU threads."
    parts = build_from_config(config)
    model, optimizer, loss_fn = parts["model"], parts["optimizer"], parts["criterion"]
    images, labels = next(iter(build_dataloaders(config.data, seed=0)[0]))

    def run():
        torch.set_num_threads(threads)
        for _ in range(count):
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    cores, default = os.cpu_count(), torch.get_num_threads()
    print(
        f"{cores} cores; PyTorch's default: {default} threads; torch {torch.__version__}"
    )
    print(f"{'model':<44} {'machine':<7} {'1 thread':>9} {'default':>9} {'ratio':>6}")
    for name, (path, overrides) in CONFIGS.items():
        base = TrainConfig() if path is None else load_config(path)
        config = apply_overrides(base, overrides)
        variants = {
            "one": steps(config, 1, args.steps),
            "default": steps(config, default, args.steps),
        }
        for machine, load in (("quiet", 0), ("busy", cores)):
            with busy_cores(load):
                medians, paired = bench(variants, args.rounds, 1)
            one, many = (1e3 * medians[k] / args.steps for k in ("one", "default"))
            print(
                f"{name:<44} {machine:<7} {one:>6.1f} ms {many:>6.1f} ms "
                f"{paired['default']:>5.2f}x"
            )
    torch.set_num_threads(default)


if __name__ == "__main__":
    main()
