"""Benchmark: a training step of the course's ViTs compiled with `torch.compile`
against eager PyTorch, on the CPU.

For each configuration the same model, optimiser and schedule (built from the
configuration) train on the same fixed batches, so the data pipeline is left out. The
compiled variant wraps the model with `torch.compile` (default inductor backend); the
time of its first steps, where compilation happens, is reported apart as the compile
time. Steady-state steps of the two variants alternate in interleaved rounds
(bench/timing.py); the ratio is the median over rounds of compiled / eager in the same
round (below 1: the compiled step is faster). The first step's logits of the two
variants are compared, and the compiled wrapper must leave the model's state-dict keys
as they were (checkpoints stay loadable without it).

    python bench/compile.py [--rounds 7] [--steps 10] [--threads N]
"""

import argparse
import copy
import time

import torch

from neural_stack.training import apply_overrides, build_from_config
from neural_stack.training.config import TrainConfig, load_config
from timing import bench

CONFIGS = {  # name: (config file or None for the default, overrides)
    "digits ViT (4 blocks, width 64), batch 64": (None, []),
    "mnist-5k ViT (configs/vit_mnist5k.yaml), batch 128": (
        "configs/vit_mnist5k.yaml",
        [],
    ),
}


def trainer_parts(config: TrainConfig, compiled: bool):
    "The model, a training step on a batch, and the network that step calls."
    torch.manual_seed(config.seed)
    built = build_from_config(config)
    model, optimizer, scheduler, criterion = (
        built[k] for k in ("model", "optimizer", "scheduler", "criterion")
    )
    network = torch.compile(model) if compiled else model

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = network(images)
        loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return logits

    return model, step


def batches(config: TrainConfig, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    "`count` random batches of the configuration's shape and classes."
    m, size = config.model, config.data.batch_size
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(
                size, m.in_channels, m.img_size, m.img_size, generator=generator
            ),
            torch.randint(0, m.num_classes, (size,), generator=generator),
        )
        for _ in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed call")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, median of {args.rounds} "
        f"interleaved rounds of {args.steps} training steps\n"
    )
    header = (
        f"{'config':<50} | {'eager ms':>8} | {'compiled/eager':>14} | {'compile s':>9}"
    )
    print(header)
    for name, (path, overrides) in CONFIGS.items():
        config = apply_overrides(
            load_config(path) if path else TrainConfig(),
            ["num_epochs=1000", "device=cpu", *overrides],
        )  # a schedule that never ends
        data = batches(config, args.steps)
        eager_model, eager = trainer_parts(config, compiled=False)
        model, compiled = trainer_parts(config, compiled=True)
        keys = list(model.state_dict())
        start = time.perf_counter()
        first = compiled(*data[0])
        compiled(*data[1])  # the backward graph compiles on the first backward
        compile_seconds = time.perf_counter() - start
        gap = (first - eager(*data[0])).abs().max().item()
        assert gap < 1e-4, f"{name}: compiled logits differ by {gap:.1e}"
        assert list(model.state_dict()) == keys == list(eager_model.state_dict())

        def run(step):
            return lambda: [step(*batch) for batch in data]

        times, ratios = bench(
            {"eager": run(eager), "compiled": run(compiled)}, args.rounds, iters=1
        )
        print(
            f"{name:<50} | {1e3 * times['eager'] / args.steps:8.1f} | "
            f"{ratios['compiled']:14.3f} | {compile_seconds:9.1f}   "
            f"(first logits differ by {gap:.1e})",
            flush=True,
        )


if __name__ == "__main__":
    main()
