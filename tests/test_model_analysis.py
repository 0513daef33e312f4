"""model_summary: parameters, multiply-adds (fused attention included), activations, and
what it reports as not counted."""

from dataclasses import asdict

import pytest
import torch
from torch import nn

from neural_stack.models.vision_transformer import VisionTransformer
from neural_stack.utils import ModelSummary, model_summary


def vit_macs(
    img_size,
    patch_size,
    in_channels,
    num_classes,
    embed_dim,
    num_layers,
    mlp_ratio,
    use_cls_token,
    **_,
):
    D, n, hidden = embed_dim, (img_size // patch_size) ** 2, int(embed_dim * mlp_ratio)
    N = n + int(use_cls_token)
    return (
        n * in_channels * patch_size**2 * D
        + num_layers * (4 * N * D * D + 2 * N * D * hidden + 2 * N * N * D)
        + D * num_classes
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(patch_size=2, use_cls_token=False),
        dict(patch_size=8, mlp_ratio=2.0, num_classes=7),
        dict(positional_embedding="sincos-2d", num_heads=4, embed_dim=32),
    ],
)
def test_counts_match_closed_forms(kwargs):
    vit = VisionTransformer(
        **{
            **dict(img_size=16, patch_size=4, embed_dim=24, num_heads=2, num_layers=2),
            **kwargs,
        }
    )
    summary = model_summary(vit, torch.randn(1, 3, 16, 16))
    assert isinstance(summary, ModelSummary) and summary._fields == (
        "params",
        "mult_adds",
        "activations",
        "table",
    )
    params, macs, acts, table = summary  # unpacks as four values
    assert (params, macs, acts, table) == (
        summary.params,
        summary.mult_adds,
        summary.activations,
        summary.table,
    )
    assert params == sum(p.numel() for p in vit.parameters())
    assert macs == vit_macs(**asdict(vit.config))  # exact, hence within 1%
    assert abs(macs - vit_macs(**asdict(vit.config))) <= 0.01 * macs
    assert acts > 0 and "#MACs" in table


def test_fused_attention_is_counted():
    """The fused path is counted like the explicit one: fvcore alone would skip
    scaled_dot_product_attention."""
    vit = VisionTransformer(
        img_size=16, patch_size=2, embed_dim=16, num_heads=2, num_layers=3
    )

    class Explicit(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x, return_attention=True)[0]

    x = torch.randn(1, 3, 16, 16)
    _, fused, _, _ = model_summary(vit, x)
    _, explicit, _, _ = model_summary(Explicit(vit), x)
    attention = 3 * 2 * 65 * 65 * 16  # layers * (QK^T + AV) * N^2 * D
    assert fused == explicit
    from fvcore.nn import FlopCountAnalysis

    plain = FlopCountAnalysis(vit.eval(), (x,))
    plain.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert plain.by_operator().get("scaled_dot_product_attention", 0) == 0
    assert fused - (plain.total() - plain.by_operator()["layer_norm"]) == attention


def test_batch_scales_and_tuple_inputs_and_mode_restored():
    vit = VisionTransformer(
        img_size=8, patch_size=4, embed_dim=8, num_heads=2, num_layers=1
    ).train()
    _, one, _, _ = model_summary(vit, torch.randn(1, 3, 8, 8))
    _, three, _, _ = model_summary(vit, (torch.randn(3, 3, 8, 8),))
    assert three == 3 * one and vit.training


def test_reports_what_it_does_not_count():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 5)
            self.norm = nn.LayerNorm(5)

        def forward(self, x):
            return torch.cumsum(self.norm(self.fc(x)), dim=-1).exp()

    params, macs, acts, table = model_summary(Odd(), torch.randn(2, 4))
    assert params == 4 * 5 + 5 + 10 and macs == 2 * 4 * 5 and acts == 10
    not_counted = table.splitlines()[-1]
    assert not_counted.startswith("not counted:")
    for op in ("aten::cumsum x1", "aten::exp x1", "aten::layer_norm x1"):
        assert op in not_counted


def test_vit_b16_parameter_count_on_meta_device():
    with torch.device("meta"):
        vit = VisionTransformer(
            img_size=224,
            patch_size=16,
            num_classes=1000,
            embed_dim=768,
            num_heads=12,
            num_layers=12,
        )
    assert sum(p.numel() for p in vit.parameters()) == 86_567_656
    assert vit_macs(**asdict(vit.config)) == 17_563_828_224
