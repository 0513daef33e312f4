"""Benchmark: neural_stack VisionTransformer against timm's VisionTransformer on CPU.

Our model is ported from timm's (`from_timm`), so both hold the same weights and
configuration and compute the same logits. Each configuration is timed for inference
(forward under inference_mode) and for a training step (forward, cross-entropy,
backward). Ours and timm's alternate in interleaved rounds (order rotated every round)
so that drift in a shared machine's load hits both alike. Times are medians over rounds;
ratios are the median over rounds of ours / timm in the same round (below 1 is faster).
A second copy of timm's model is timed too: its ratio to the first is the noise floor.

    python bench/vit.py [--rounds 15] [--threads N] [--modes training]
"""

import argparse
import copy
import warnings

import torch
import torch.nn.functional as F

from neural_stack.models.vision_transformer import from_timm
from timing import bench

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from timm.models.vision_transformer import VisionTransformer as TimmViT

_TI = dict(img_size=32, patch_size=4, embed_dim=192, num_heads=3, num_classes=10)
# (name, batch, timm kwargs): small images, several depths, batches of 32 to 128
CONFIGS = [
    ("ViT-Ti/4 @ 32px, 12 blocks", 32, dict(_TI, depth=12)),
    ("ViT-Ti/4 @ 32px, 12 blocks", 64, dict(_TI, depth=12)),
    ("ViT-Ti/4 @ 32px, 12 blocks", 128, dict(_TI, depth=12)),
    ("ViT-Ti/4 @ 32px, 6 blocks", 64, dict(_TI, depth=6)),
    (
        "digits ViT @ 8px, 2 blocks",
        128,
        dict(
            img_size=8,
            patch_size=2,
            in_chans=1,
            embed_dim=32,
            depth=2,
            num_heads=4,
            num_classes=10,
        ),
    ),
    (
        "ViT-S/16 @ 224px, 12 blocks",
        4,
        dict(
            img_size=224,
            patch_size=16,
            embed_dim=384,
            depth=12,
            num_heads=6,
            num_classes=1000,
        ),
    ),
]


def make_step(model, images, labels, training: bool):
    def train_step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()

    def infer():
        with torch.inference_mode():
            model(images)

    return train_step if training else infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--iters", type=int, default=2, help="calls per timing, per round"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=("inference", "training"),
        default=["inference", "training"],
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, "
        f"median of {args.rounds} interleaved rounds of {args.iters} calls\n"
    )
    print(
        "ours/timm: median over rounds of the paired ratio; timm/timm: a second copy\n"
        "of timm's model against the first, the noise floor of this machine (1.000 on\n"
        "a perfectly quiet one)\n"
    )
    print(
        f"{'config':<34} {'batch':>5} | {'mode':<9} | {'timm ms':>8} | "
        f"{'ours ms':>8} | {'ours/timm':>9} | {'timm/timm':>9}"
    )
    for name, batch, cfg in CONFIGS:
        torch.manual_seed(0)
        ref = TimmViT(**cfg)
        ours = from_timm(ref)
        # a second copy of timm's model, so no variant reuses another's warm weights
        control = copy.deepcopy(ref)
        images = torch.randn(
            batch, cfg.get("in_chans", 3), cfg["img_size"], cfg["img_size"]
        )
        labels = torch.randint(cfg["num_classes"], (batch,))
        with torch.no_grad():
            assert torch.allclose(ours.eval()(images), ref.eval()(images), atol=1e-4)
        for mode in args.modes:
            training = mode == "training"
            ours.train(training), ref.train(training), control.train(training)
            t, ratio = bench(
                {
                    "timm": make_step(ref, images, labels, training),
                    "ours": make_step(ours, images, labels, training),
                    "timm again": make_step(control, images, labels, training),
                },
                args.rounds,
                args.iters,
            )
            print(
                f"{name:<34} {batch:>5} | {mode:<9} | "
                f"{t['timm'] * 1e3:8.1f} | {t['ours'] * 1e3:8.1f} | "
                f"{ratio['ours']:9.3f} | {ratio['timm again']:9.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
