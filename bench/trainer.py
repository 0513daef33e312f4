"""Benchmark: the Trainer's overhead over a hand-written PyTorch training loop.

The same model, data loader, optimizer, schedule and loss train for one epoch in
each variant: `Trainer.fit` (one epoch, without validation or callbacks) and the
plain loop a user would write (forward, loss, zero_grad, backward, step, schedule
step). Variants alternate in interleaved rounds (bench/timing.py), each continuing
its own copy of the model; the ratio is the median over rounds of trainer / plain
in the same round (1.000 means no overhead), beside a second plain loop against
the first: the noise floor of this machine.

That floor is a few percent on a shared machine, more than the trainer's own cost, so
a second table measures the cost directly: fits of 1 and of 64 steps on one batch of two
images (every parameter, little arithmetic) against the plain loop's, solved for the
trainer's extra seconds per `fit` and per step. With the epoch's steps and the plain
loop's time from the first table, they give the ratio the overhead alone implies.

    python bench/trainer.py [--rounds 9] [--threads N]
"""

import argparse
import torch
from torch import nn

from neural_stack.training import (
    Trainer,
    apply_overrides,
    build_dataloaders,
    build_from_config,
)
from neural_stack.training.config import TrainConfig, load_config
from timing import bench

CONFIGS = {  # name: (config file or None for the default, overrides)
    "digits ViT (4 blocks, width 64), batch 64": (None, []),
    "mnist-5k ViT (4 blocks, width 128, 7 x 7 patches), batch 128": (
        "configs/vit_mnist5k.yaml",
        [],
    ),
}


def variants(config: TrainConfig) -> dict:
    "One epoch of each variant, each with its own model, optimizer, schedule, loader."

    def parts():
        built = build_from_config(config)
        loader, _ = build_dataloaders(config.data, seed=config.seed)
        return built, loader

    def plain():
        return plain_loop(*parts(), config.grad_clip_norm)

    trainer = trainer_fit(*parts(), config.grad_clip_norm)
    return {"plain": plain(), "trainer": trainer, "plain again": plain()}


def trainer_fit(built: dict, loader, clip: float | None):
    "One epoch of `Trainer.fit`, over `loader`, of the `built` parts, no validation."
    return Trainer(
        built["model"],
        built["optimizer"],
        loader,
        None,
        built["criterion"],
        built["scheduler"],
        device="cpu",
        num_epochs=1,
        grad_clip_norm=clip,
    ).fit


def plain_loop(built: dict, loader, clip: float | None):
    "One epoch of the loop a user would write, over `loader`, of the `built` parts."
    model, opt, sched, loss_fn = (
        built[k] for k in ("model", "optimizer", "scheduler", "criterion")
    )

    def epoch():
        model.train()
        for images, labels in loader:
            loss = loss_fn(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()

    return epoch


def fixed_cost(config: TrainConfig, rounds: int, steps: int = 64) -> tuple:
    """The trainer's seconds beyond the plain loop's per `fit` and per step: fits of 1
    and of `steps` steps on one batch of two images, each timed against the plain loop
    in the same rounds (the median of the paired ratios, times the plain loop's time)."""
    loader, _ = build_dataloaders(config.data, seed=config.seed)
    images, labels = next(iter(loader))
    batch, extra = (images[:2], labels[:2]), {}
    for n in (1, steps):
        variants = {
            name: make(build_from_config(config), [batch] * n, config.grad_clip_norm)
            for name, make in (("plain", plain_loop), ("trainer", trainer_fit))
        }
        times, ratios = bench(variants, rounds, 5)
        extra[n] = (ratios["trainer"] - 1) * times["plain"]
    per_step = (extra[steps] - extra[1]) / (steps - 1)
    return extra[1] - per_step, per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, median of {args.rounds} "
        "interleaved rounds of one epoch\n"
    )
    print(
        f"{'config':<46} | {'plain s':>7} | {'trainer/plain':>13} | {'plain/plain':>11}"
    )
    configs, epochs = {}, {}
    for name, (path, overrides) in CONFIGS.items():
        configs[name] = config = apply_overrides(
            load_config(path) if path else TrainConfig(),
            ["num_epochs=1000", *overrides],
        )  # a schedule that never ends
        times, ratios = bench(variants(config), args.rounds, iters=1)
        epochs[name] = times["plain"]
        print(
            f"{name:<46} | {times['plain']:7.2f} | {ratios['trainer']:13.3f} | "
            f"{ratios['plain again']:11.3f}",
            flush=True,
        )
    print(f"\nthe trainer's own cost, median of {args.rounds} rounds of 5 fits\n")
    print(f"{'config':<46} | {'per fit ms':>10} | {'per step us':>11} | {'implied':>7}")
    for name, config in configs.items():
        per_fit, per_step = fixed_cost(config, args.rounds)
        steps = len(build_dataloaders(config.data, seed=config.seed)[0])
        implied = 1 + (per_fit + steps * per_step) / epochs[name]
        print(
            f"{name:<46} | {per_fit * 1e3:10.2f} | {per_step * 1e6:11.0f} | "
            f"{implied:7.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
