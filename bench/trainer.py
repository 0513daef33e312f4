"""Benchmark: the Trainer's overhead over a hand-written PyTorch training loop.

The same model, data loader, optimizer, schedule and loss train for one epoch in
each variant: `Trainer.fit` (one epoch, without validation or callbacks) and the
plain loop a user would write (forward, loss, zero_grad, backward, step, schedule
step). Variants alternate in interleaved rounds (bench/timing.py), each continuing
its own copy of the model; the ratio is the median over rounds of trainer / plain
in the same round (1.000 means no overhead), beside a second plain loop against
the first: the noise floor of this machine.

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

    (built, loader) = parts()
    trainer = Trainer(
        built["model"],
        built["optimizer"],
        loader,
        None,
        built["criterion"],
        built["scheduler"],
        device="cpu",
        num_epochs=1,
        grad_clip_norm=config.grad_clip_norm,
    )

    def plain_loop():
        built, loader = parts()
        model, opt, sched, loss_fn = (
            built[k] for k in ("model", "optimizer", "scheduler", "criterion")
        )
        clip = config.grad_clip_norm

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

    return {"plain": plain_loop(), "trainer": trainer.fit, "plain again": plain_loop()}


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
    for name, (path, overrides) in CONFIGS.items():
        config = apply_overrides(
            load_config(path) if path else TrainConfig(),
            ["num_epochs=1000", *overrides],
        )  # a schedule that never ends
        times, ratios = bench(variants(config), args.rounds, iters=1)
        print(
            f"{name:<46} | {times['plain']:7.2f} | {ratios['trainer']:13.3f} | "
            f"{ratios['plain again']:11.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
