"""Benchmark: where an epoch of the mnist-5k recipe spends its time.

One epoch of `configs/vit_mnist5k.yaml` (or `--config`, such as the experiments'
recipe `configs/vit_mnist5k_experiments.yaml`, which crops image by image), run by
the `Trainer` itself under `torch.profiler`, split into the data pipeline (reading,
augmenting and collating a batch: the loader's `__next__`), the forward pass (from
the batch's start to the `on_before_backward` hook), the backward pass (autograd's
engine) and the optimiser step, and validation; the rest (hooks, metric sums, the
loop) is what is left of the epoch's wall time. Figures are per training step and as
a share of the epoch.

    python bench/epoch_profile.py [--config FILE] [--epochs 2] [--threads 1]
                                  [--workers 0] [override ...]

The first epoch warms up allocators and caches; the table is the last epoch's.
"""

import argparse
import time

import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from neural_stack.training import Callback, apply_overrides, load_config
from neural_stack.training.run import build_trainer

# profiler ranges: the name of each, as torch labels it, and the phase it belongs to
RANGES = {
    "enumerate(DataLoader)": "data: load, augment, collate",
    "forward": "forward",
    "autograd::engine::evaluate_function": "backward",
    "Optimizer.step": "optimiser step",
    "validation": "validation",
}


class _Ranges(Callback):
    "Profiler ranges around the forward pass and validation, from the trainer's hooks."

    def __init__(self):
        self.open = {}

    def _enter(self, name):
        self.open[name] = record_function(name)
        self.open[name].__enter__()

    def _exit(self, name):
        if name in self.open:
            self.open.pop(name).__exit__(None, None, None)

    def on_batch_begin(self, state):
        self._enter("forward")

    def on_before_backward(self, state, loss):
        self._exit("forward")

    def on_validation_begin(self, state):
        self._enter("validation")

    def on_validation_end(self, state):
        self._exit("validation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/vit_mnist5k.yaml")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="key.path=value, as on the CLI")
    args = parser.parse_args()
    config = apply_overrides(
        load_config(args.config),
        [
            f"num_epochs={args.epochs}",
            f"threads={args.threads}",
            f"data.num_workers={args.workers}",
            "scheduler.warmup_epochs=1",
            "device=cpu",
            *args.overrides,
        ],
    )
    trainer = build_trainer(config, [_Ranges()])
    trainer.num_epochs = args.epochs - 1
    trainer.fit()  # the warm-up epochs
    trainer.num_epochs = args.epochs
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        trainer.fit(resume_from=trainer.state_dict())
        wall = time.perf_counter() - start
    steps = len(trainer.train_loader)
    totals = dict.fromkeys(RANGES.values(), 0.0)
    for event in prof.key_averages():
        for prefix, phase in RANGES.items():
            if event.key.startswith(prefix):
                totals[phase] += event.cpu_time_total / 1e6  # seconds
    totals["the rest: hooks, sums, the loop"] = wall - sum(totals.values())
    print(
        f"{args.config}: one epoch of {steps} steps of {config.data.batch_size} "
        f"images, {args.threads} thread(s), {args.workers} loader worker(s): "
        f"{wall:.2f} s"
    )
    print(f"{'phase':<32} {'ms / step':>10} {'share':>7}")
    for phase, seconds in totals.items():
        print(f"{phase:<32} {1000 * seconds / steps:>10.2f} {seconds / wall:>7.1%}")


if __name__ == "__main__":
    main()
