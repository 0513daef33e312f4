"""CPU benchmark: neural_stack MultiHeadAttention against torch.nn.MultiheadAttention.

Both modules hold the same weights and run self-attention on the same batch. The
variants are timed in interleaved rounds, their order rotated every round, so that drift
in a shared machine's load hits them alike (bench/timing.py). Times are medians over
rounds; ratios are the median over rounds of ours / torch in the same round: below 1 is
faster.

    python bench/attention.py [--rounds 15] [--threads N]
"""

import argparse

import torch
from torch import nn

from neural_stack.models import MultiHeadAttention, to_torch_mha
from timing import bench

# batch, tokens, embed_dim, heads: ViT-Tiny on 32x32 (patch 4), ViT-S/16 and ViT-B/16
# at 224
SIZES = [
    (32, 65, 192, 3),
    (8, 197, 384, 6),
    (4, 197, 768, 12),
]


def step(module: nn.Module, x: torch.Tensor, need_weights: bool, training: bool):
    """One self-attention forward (inference) or forward + backward (training) of
    `module`."""

    def forward():
        return module(x, x, x, need_weights=need_weights)[0]

    def train_step():
        forward().sum().backward()

    def infer():
        with torch.inference_mode():
            forward()

    return train_step if training else infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, "
        f"median of {args.rounds} interleaved rounds\n"
    )
    print(
        f"{'B':>3} {'T':>4} {'D':>4} {'H':>3} | {'mode':<9} | {'torch ms':>8} | "
        f"{'fused':>6} {'weights':>7}  (ours/torch)"
    )
    for B, T, D, H in SIZES:
        torch.manual_seed(0)
        ours, x = MultiHeadAttention(D, H), torch.randn(B, T, D)
        ref = to_torch_mha(ours)
        iters = max(2, int(2e8 / (B * T * D * (T + 4 * D))))
        for mode in ("inference", "training"):
            training = mode == "training"
            ours.train(training), ref.train(training)
            inputs = x.clone().requires_grad_(training)
            medians, ratios = bench(
                {
                    "torch": step(ref, inputs, False, training),
                    "fused": step(ours, inputs, False, training),
                    "weights": step(ours, inputs, True, training),
                },
                args.rounds,
                iters,
            )
            print(
                f"{B:>3} {T:>4} {D:>4} {H:>3} | {mode:<9} | "
                f"{medians['torch'] * 1e3:8.2f} | "
                f"{ratios['fused']:6.3f} {ratios['weights']:7.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
