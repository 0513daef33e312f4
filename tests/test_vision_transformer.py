"""VisionTransformer: structure, validation, regularisers, other image sizes, and exact
ports of torchvision and timm."""

import warnings
from dataclasses import asdict

import pytest
import torch
import torchvision
from torch import nn

from neural_stack.models.vision_transformer import (
    ViTConfig,
    VisionTransformer,
    from_timm,
    from_torchvision,
)
from neural_stack.validation import ArgumentError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    from timm.utils import AttentionExtract

TINY = dict(
    img_size=16, patch_size=4, embed_dim=24, num_heads=2, num_layers=2, num_classes=5
)


def tiny(**kwargs):
    torch.manual_seed(0)
    return VisionTransformer(**{**TINY, **kwargs})


def closed_form_params(
    img_size,
    patch_size,
    in_channels,
    num_classes,
    embed_dim,
    num_layers,
    mlp_ratio,
    positional_embedding,
    use_cls_token,
    **_,
):
    D, g, h, cls = (
        embed_dim,
        img_size // patch_size,
        int(embed_dim * mlp_ratio),
        int(use_cls_token),
    )
    pos = {
        "none": 0,
        "sincos-2d": 0,
        "learned-1d": (g * g + cls) * D,
        "learned-2d": g * D + cls * D,
    }[positional_embedding]
    block = 4 * D * D + 4 * D + 2 * D * h + h + D + 4 * D
    return (
        in_channels * patch_size**2 * D
        + D
        + cls * D
        + pos
        + num_layers * block
        + 2 * D
        + D * num_classes
        + num_classes
    )


# ---------------------------------------------------------------- structure
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(use_cls_token=False),
        dict(positional_embedding="learned-2d"),
        dict(positional_embedding="sincos-2d", use_cls_token=False),
        dict(positional_embedding="none", mlp_ratio=2.5, in_channels=1, num_classes=3),
    ],
)
def test_shapes_params_and_attention(kwargs):
    vit = tiny(**kwargs).eval()
    x = torch.randn(3, vit.config.in_channels, 16, 16)
    with torch.no_grad():
        logits = vit(x)
        logits2, attn = vit(x, return_attention=True)
    n = 16 + vit.config.use_cls_token
    assert logits.shape == (3, vit.config.num_classes)
    assert len(attn) == 2 and all(a.shape == (3, 2, n, n) for a in attn)
    torch.testing.assert_close(attn[1].sum(-1), torch.ones(3, 2, n))
    # fused and explicit paths agree
    torch.testing.assert_close(logits, logits2, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in vit.parameters()) == closed_form_params(
        **asdict(vit.config)
    )


def test_default_configuration_and_details():
    vit = VisionTransformer()
    assert (
        vit.config
        == ViTConfig()
        == ViTConfig(
            img_size=32,
            patch_size=4,
            in_channels=3,
            num_classes=10,
            embed_dim=192,
            num_heads=3,
            num_layers=12,
            mlp_ratio=4.0,
            dropout=0.0,
            attention_dropout=0.0,
            drop_path=0.0,
            positional_embedding="learned-1d",
            use_cls_token=True,
        )
    )
    assert (
        sum(p.numel() for p in vit.parameters())
        == closed_form_params(**asdict(vit.config))
        == 5_362_762
    )
    norms = [m for m in vit.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 25 and all(m.eps == 1e-6 for m in norms)
    gelus = [m for m in vit.modules() if isinstance(m, nn.GELU)]
    assert len(gelus) == 12 and all(m.approximate == "none" for m in gelus)
    assert all(b.attn.qkv_proj.bias is not None for b in vit.blocks)
    assert isinstance(vit.fc_norm, nn.Identity) and isinstance(vit.norm, nn.LayerNorm)
    mp = VisionTransformer(use_cls_token=False)
    assert (
        isinstance(mp.norm, nn.Identity)
        and isinstance(mp.fc_norm, nn.LayerNorm)
        and mp.cls_token is None
    )


def test_init_like_timm():
    torch.manual_seed(0)
    vit = VisionTransformer(embed_dim=256, num_heads=4, num_layers=2)
    w = vit.blocks[0].mlp.fc1.weight
    assert (
        abs(w.std().item() - 0.02) < 0.001
        and torch.count_nonzero(vit.blocks[0].mlp.fc1.bias) == 0
    )
    assert abs(vit.head.weight.std().item() - 0.02) < 0.003
    assert abs(vit.pos_embed.weight.std().item() - 0.02) < 0.002
    assert torch.count_nonzero(vit.cls_token) == 0


def test_num_classes_zero_returns_features():
    vit = tiny(num_classes=0).eval()
    assert isinstance(vit.head, nn.Identity) and vit(
        torch.randn(2, 3, 16, 16)
    ).shape == (2, 24)


def test_gradients_reach_every_parameter():
    vit = tiny(positional_embedding="learned-2d")
    vit(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vit.parameters())


# ---------------------------------------------------------------- regularisers
def _random_in_train_mode(vit):
    x = torch.randn(4, 3, 16, 16)
    vit.train()
    a, b = vit(x), vit(x)
    vit.eval()
    with torch.no_grad():
        assert torch.equal(vit(x), vit(x))
    return not torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs", [dict(dropout=0.3), dict(attention_dropout=0.3), dict(drop_path=0.5)]
)
def test_each_regulariser_is_honoured(kwargs):
    assert _random_in_train_mode(tiny(**kwargs))
    assert not _random_in_train_mode(tiny())


def test_regulariser_placement():
    vit = tiny(dropout=0.1, attention_dropout=0.2, drop_path=0.3, num_layers=4)
    assert [round(b.drop_path.p, 6) for b in vit.blocks] == [0.0, 0.1, 0.2, 0.3]
    assert all(b.attn.dropout == 0.2 for b in vit.blocks)
    assert vit.pos_drop.p == 0.1 and all(
        b.attn_out_drop.p == b.mlp.drop1.p == b.mlp.drop2.p == 0.1 for b in vit.blocks
    )


def test_attention_weights_are_returned_before_dropout():
    vit = tiny(attention_dropout=0.5).train()
    _, attn = vit(torch.randn(2, 3, 16, 16), return_attention=True)
    torch.testing.assert_close(attn[0].sum(-1), torch.ones(2, 2, 17))


# ---------------------------------------------------------------- other image sizes
@pytest.mark.parametrize("kind", ["learned-1d", "learned-2d", "sincos-2d", "none"])
@pytest.mark.parametrize("cls", [True, False])
def test_runs_at_other_sizes_and_resample_agrees(kind, cls):
    vit = tiny(positional_embedding=kind, use_cls_token=cls).eval()
    x = torch.randn(2, 3, 24, 24)
    bigger = vit.resample(24)
    assert (
        bigger.patch_embed.num_patches == 36
        and bigger.config.img_size == 24
        and not bigger.training
    )
    with torch.no_grad():
        torch.testing.assert_close(vit(x), bigger(x), atol=1e-5, rtol=1e-5)
        same = vit.resample(16)
        y = torch.randn(2, 3, 16, 16)
        assert torch.equal(vit(y), same(y))
    assert vit.patch_embed.num_patches == 16  # the original is untouched


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(img_size=0), r"img_size=0; expected a positive integer"),
        (dict(img_size=30), r"img_size=30; expected a multiple of patch_size=4"),
        (dict(patch_size=2.0), r"patch_size=2.0; expected a positive integer"),
        (dict(in_channels=0), r"in_channels=0; expected a positive integer"),
        (dict(num_classes=-1), r"num_classes=-1; expected an integer >= 0"),
        (dict(num_classes=True), r"num_classes=True; expected an integer >= 0"),
        (dict(embed_dim=None), r"embed_dim=None; expected a positive integer"),
        (
            dict(embed_dim=100, num_heads=3),
            r"embed_dim=100; expected a multiple of num_heads=3",
        ),
        (dict(num_heads=0), r"num_heads=0; expected a positive integer"),
        (dict(num_layers=0), r"num_layers=0; expected a positive integer"),
        (dict(mlp_ratio=0), r"mlp_ratio=0; expected a finite number > 0"),
        (dict(mlp_ratio="4"), r"mlp_ratio='4'; expected a finite number > 0"),
        (
            dict(mlp_ratio=0.001),
            r"mlp_ratio=0.001; expected at least 1 / embed_dim=192",
        ),
        (dict(dropout=1.0), r"dropout=1.0; expected a probability in \[0, 1\)"),
        (dict(dropout=-0.1), r"dropout=-0.1; expected a probability in \[0, 1\)"),
        (
            dict(attention_dropout=2),
            r"attention_dropout=2; expected a probability in \[0, 1\)",
        ),
        (dict(drop_path=1.5), r"drop_path=1.5; expected a probability in \[0, 1\)"),
        (
            dict(positional_embedding="rope"),
            r"positional_embedding='rope'; expected one of "
            r"'none', 'learned-1d', 'learned-2d', 'sincos-2d'",
        ),
        (dict(use_cls_token=1), r"use_cls_token=1; expected True or False"),
        (
            dict(positional_embedding="sincos-2d", embed_dim=6, num_heads=2),
            r"embed_dim=6; expected a multiple of 4 for 'sincos-2d'",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        ViTConfig(**kwargs)
    with pytest.raises(ArgumentError, match=match):
        VisionTransformer(**kwargs)


def test_config_is_mutable_and_checked_again_before_building():
    config = ViTConfig(embed_dim=64, num_heads=4, num_layers=2)
    config.embed_dim = 66  # a loaded configuration may be edited field by field
    with pytest.raises(
        ArgumentError, match=r"embed_dim=66; expected a multiple of num_heads=4"
    ):
        VisionTransformer.from_config(config)
    config.num_heads = 6
    vit = VisionTransformer.from_config(config)
    assert (
        vit.config == config
        and vit.config is not config
        and vit.blocks[0].attn.num_heads == 6
    )


# ---------------------------------------------------------------- ports
def timm_logits_and_attention(model, x):
    with torch.no_grad():
        logits = model(x)
        # timm computes attention maps only on its explicit path
        for block in model.blocks:
            block.attn.fused_attn = False
        # torch.fx notes that eval-mode graphs differ from train-mode ones
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return logits, list(AttentionExtract(model)(x).values())


def assert_same(ours, ref_logits, x, ref_attn=None):
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref_logits, atol=1e-5, rtol=0)
        logits, attn = ours(x, return_attention=True)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    if ref_attn is not None:
        assert len(attn) == len(ref_attn)
        for a, b in zip(attn, ref_attn):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(
            image_size=16,
            patch_size=4,
            num_layers=1,
            num_heads=2,
            hidden_dim=16,
            mlp_dim=64,
            num_classes=5,
        ),
        dict(
            image_size=24,
            patch_size=8,
            num_layers=3,
            num_heads=4,
            hidden_dim=32,
            mlp_dim=48,
            num_classes=3,
        ),
        dict(
            image_size=20,
            patch_size=2,
            num_layers=2,
            num_heads=1,
            hidden_dim=8,
            mlp_dim=8,
            num_classes=7,
        ),
    ],
)
def test_from_torchvision(cfg):
    torch.manual_seed(0)
    ref = torchvision.models.VisionTransformer(
        **cfg, dropout=0.1, attention_dropout=0.2
    ).eval()
    # torchvision zero-initialises its head
    nn.init.normal_(ref.heads.head.weight, std=0.5)
    nn.init.normal_(ref.heads.head.bias, std=0.5)
    ours = from_torchvision(ref)
    assert (
        not ours.training
        and ours.config.dropout == 0.1
        and ours.config.attention_dropout == 0.2
    )
    assert (
        ours.config.num_layers == cfg["num_layers"]
        and ours.blocks[0].mlp.fc1.out_features == cfg["mlp_dim"]
    )
    x = torch.randn(2, 3, cfg["image_size"], cfg["image_size"])
    with torch.no_grad():
        ref_logits = ref(x)
    assert ref_logits.abs().max() > 0.1
    assert_same(ours, ref_logits, x)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(
            img_size=16, patch_size=4, depth=1, num_heads=2, embed_dim=16, num_classes=5
        ),
        dict(
            img_size=24,
            patch_size=8,
            depth=3,
            num_heads=4,
            embed_dim=32,
            num_classes=3,
            global_pool="avg",
            class_token=False,
        ),
        dict(
            img_size=20,
            patch_size=2,
            depth=2,
            num_heads=1,
            embed_dim=8,
            num_classes=4,
            mlp_ratio=2.0,
            in_chans=1,
        ),
        dict(
            img_size=16,
            patch_size=8,
            depth=2,
            num_heads=2,
            embed_dim=16,
            num_classes=2,
            pos_embed="none",
        ),
        dict(
            img_size=12,
            patch_size=3,
            depth=2,
            num_heads=3,
            embed_dim=24,
            num_classes=6,
            global_pool="avg",
            class_token=False,
            drop_path_rate=0.2,
            attn_drop_rate=0.1,
            proj_drop_rate=0.1,
            pos_drop_rate=0.1,
        ),
    ],
)
def test_from_timm(cfg):
    torch.manual_seed(0)
    ref = TimmViT(**cfg).eval()
    nn.init.normal_(ref.head.bias, std=0.5)
    ours = from_timm(ref)
    assert ours.config.use_cls_token == cfg.get("class_token", True)
    assert ours.config.positional_embedding == (
        "none" if cfg.get("pos_embed") == "none" else "learned-1d"
    )
    assert ours.config.drop_path == pytest.approx(cfg.get("drop_path_rate", 0.0))
    x = torch.randn(2, cfg.get("in_chans", 3), cfg["img_size"], cfg["img_size"])
    ref_logits, ref_attn = timm_logits_and_attention(ref, x)
    assert len(ref_attn) == cfg["depth"]
    assert_same(ours, ref_logits, x, ref_attn)
    with torch.no_grad():  # timm's two halves, with timm's meaning
        tokens, ref_tokens = ours.forward_features(x), ref.forward_features(x)
        torch.testing.assert_close(tokens, ref_tokens, atol=1e-5, rtol=0)
        for pre_logits in (False, True):
            torch.testing.assert_close(
                ours.forward_head(tokens, pre_logits=pre_logits),
                ref.forward_head(ref_tokens, pre_logits=pre_logits),
                atol=1e-5,
                rtol=0,
            )
        assert ours.forward_head(tokens, pre_logits=True).shape == (2, cfg["embed_dim"])


def test_from_timm_keeps_training_mode():
    ref = TimmViT(
        img_size=16, patch_size=8, depth=1, num_heads=2, embed_dim=16, num_classes=2
    ).train()
    assert from_timm(ref).training


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(reg_tokens=2),
            r"reg_tokens=2 with positional rows \(no_embed_class=False\) is not",
        ),
        (dict(dynamic_img_size=True), r"dynamic_img_size=True is not supported"),
        (
            dict(init_values=1e-5),
            r"layer scale \(init_values\), qk_norm, scale norms are not supported",
        ),
        (
            dict(qk_norm=True),
            r"layer scale \(init_values\), qk_norm, scale norms are not supported",
        ),
        (
            dict(global_pool="map"),
            r"global_pool='map' with class_token=True is not supported",
        ),
        (
            dict(global_pool="avg"),
            r"global_pool='avg' with class_token=True is not supported",
        ),
        (
            dict(fc_norm=True),
            r"with the class token the final norm must come before pooling",
        ),
        (
            dict(global_pool="avg", class_token=False, fc_norm=False),
            r"with global_pool='avg' the final norm must come after pooling",
        ),
        (dict(pre_norm=True), r"pre_norm=True is not supported"),
        (dict(qkv_bias=False), r"qkv_bias=False or proj_bias=False is not supported"),
        (
            dict(act_layer="gelu_tanh"),
            r"activation .* is not supported; expected exact nn.GELU\(\)",
        ),
        (
            dict(drop_rate=0.1),
            r"drop_rate=0.1 \(dropout before the head\) is not supported",
        ),
        (dict(patch_drop_rate=0.1), r"patch_drop_rate > 0 is not supported"),
        (dict(pos_drop_rate=0.1), r"dropout rates \[0.0, 0.1\] differ"),
        (dict(img_size=(16, 24)), r"expected square images and patches"),
    ],
)
def test_from_timm_refuses_what_it_cannot_represent(kwargs, match):
    ref = TimmViT(
        **{
            **dict(
                img_size=16,
                patch_size=8,
                depth=1,
                num_heads=2,
                embed_dim=16,
                num_classes=2,
            ),
            **kwargs,
        }
    )
    with pytest.raises(ValueError, match=match):
        from_timm(ref)


def test_from_timm_refuses_layer_norm_eps_and_other_models():
    from functools import partial

    ref = TimmViT(
        img_size=16,
        patch_size=8,
        depth=1,
        num_heads=2,
        embed_dim=16,
        num_classes=2,
        norm_layer=partial(nn.LayerNorm, eps=1e-5),
    )
    with pytest.raises(
        ValueError,
        match=r"norm is LayerNorm\(eps=1e-05\); expected LayerNorm\(eps=1e-06\)",
    ):
        from_timm(ref)
    with pytest.raises(
        ValueError,
        match=(
            r"expected a timm.models.vision_transformer.VisionTransformer or "
            r"timm.models.deit.VisionTransformerDistilled, got Linear"
        ),
    ):
        from_timm(nn.Linear(2, 2))


def test_from_torchvision_refusals():
    from functools import partial

    base = dict(
        image_size=16,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
    )
    with pytest.raises(
        ValueError,
        match=r"representation_size=8 \(a pre-logits layer\) is not supported",
    ):
        from_torchvision(
            torchvision.models.VisionTransformer(**base, representation_size=8)
        )
    with pytest.raises(ValueError, match=r"encoder.ln is LayerNorm\(eps=1e-05\)"):
        from_torchvision(
            torchvision.models.VisionTransformer(
                **base, norm_layer=partial(nn.LayerNorm, eps=1e-5)
            )
        )
    stem = [
        torchvision.models.vision_transformer.ConvStemConfig(
            out_channels=8, kernel_size=3, stride=2
        )
    ]
    with pytest.raises(
        ValueError, match=r"conv_stem_configs \(a convolutional stem\) is not supported"
    ):
        from_torchvision(
            torchvision.models.VisionTransformer(**base, conv_stem_configs=stem)
        )
    with pytest.raises(
        ValueError,
        match=r"expected a torchvision.models.VisionTransformer, got VisionTransformer",
    ):
        from_torchvision(tiny())


def test_from_timm_without_timm_gives_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name.startswith("timm"):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(
        ImportError, match=r"from_timm needs timm: pip install 'neural-stack\[timm\]'"
    ):
        from_timm(nn.Linear(2, 2))


def test_resample_keeps_dtype_and_training_mode():
    vit = tiny(positional_embedding="learned-2d").double().train()
    bigger = vit.resample(24)
    assert bigger.training and all(
        p.dtype == torch.float64 for p in bigger.parameters()
    )
    vit.eval(), bigger.eval()
    x = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(vit(x), bigger(x))


def test_forward_features_and_forward_head_compose_to_forward():
    vit = tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens, attn = vit.forward_features(x, return_attention=True)
        assert tokens.shape == (2, 17, 24) and len(attn) == 2
        # fused and explicit
        torch.testing.assert_close(vit.forward_features(x), tokens, atol=1e-5, rtol=0)
        logits, attn2 = vit(x, return_attention=True)
        assert torch.equal(vit.forward_head(tokens), logits) and all(
            torch.equal(a, b) for a, b in zip(attn, attn2)
        )
        torch.testing.assert_close(
            vit.head(vit.forward_head(tokens, pre_logits=True)), logits
        )


# ---------------------------------------------------------------- DeiT's token
def test_from_timm_ports_deit_distilled_models():
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    ref = VisionTransformerDistilled(
        img_size=16, patch_size=4, depth=2, num_heads=2, embed_dim=24, num_classes=5
    ).eval()
    nn.init.normal_(ref.pos_embed, std=0.5)  # every positional row matters
    nn.init.normal_(ref.head_dist.bias, std=0.5)
    ours = from_timm(ref)
    assert ours.config.distillation_token and ours.dist_token.shape == (1, 1, 24)
    x = torch.randn(3, 3, 16, 16)
    ref_logits, ref_attn = timm_logits_and_attention(ref, x)
    assert ref_attn[0].shape[-1] == 16 + 2  # class, distillation and patch tokens
    assert_same(ours, ref_logits, x, ref_attn)
    ref.set_distilled_training(True)
    ref.train(), ours.train()
    with torch.no_grad():  # training mode: each head on its own, as timm returns them
        for a, b in zip(ours(x, separate_heads=True), ref(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        tokens = ours.forward_features(x)
        cls, dist = ours.forward_head(tokens, separate_heads=True)
        torch.testing.assert_close(ours.forward_head(tokens), (cls + dist) / 2)
        torch.testing.assert_close(
            ours.forward_head(tokens, pre_logits=True),
            ref.forward_head(ref.forward_features(x), pre_logits=True),
            atol=1e-5,
            rtol=0,
        )


def test_distillation_token_parameters_gradients_and_resample():
    plain, distilled = tiny(), tiny(distillation_token=True)
    extra = sum(p.numel() for p in distilled.parameters()) - sum(
        p.numel() for p in plain.parameters()
    )
    assert extra == 24 + (24 * 5 + 5)  # the token and its head
    x = torch.randn(2, 3, 16, 16)
    cls, dist = distilled(x, separate_heads=True)
    (cls.sum() + 2 * dist.sum()).backward()
    assert all(p.grad is not None for p in distilled.parameters())
    assert not torch.equal(cls, dist)  # two heads, two answers
    bigger = distilled.resample(24)
    assert torch.equal(bigger.dist_token, distilled.dist_token)
    _, attentions = bigger(torch.randn(1, 3, 24, 24), return_attention=True)
    assert attentions[0].shape[-1] == 36 + 2


def test_distillation_token_refusals():
    with pytest.raises(
        ArgumentError, match=r"distillation_token=True; expected False with use_cls"
    ):
        tiny(distillation_token=True, use_cls_token=False)
    with pytest.raises(ArgumentError, match=r"distillation_token='yes'"):
        tiny(distillation_token="yes")
    with pytest.raises(ValueError, match="separate_heads=True needs distillation"):
        tiny()(torch.randn(1, 3, 16, 16), separate_heads=True)


REGISTERS = dict(img_size=16, patch_size=4, depth=2, num_heads=2, embed_dim=16)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(reg_tokens=4, class_token=False, global_pool="avg", no_embed_class=True),
        dict(reg_tokens=1, no_embed_class=True),
        dict(no_embed_class=True),  # a class token without a position
    ],
)
def test_from_timm_ports_register_tokens(kwargs):
    torch.manual_seed(0)
    ref = TimmViT(**REGISTERS, num_classes=3, **kwargs).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ours = from_timm(ref)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() < 1e-5
        assert ours.num_prefix_tokens == ref.num_prefix_tokens
        if ours.reg_token is not None:  # (a constant shift would vanish in the norm)
            ours.reg_token.add_(torch.randn_like(ours.reg_token))
        moved = (ours(x) - ref(x)).abs().max()
    assert (moved > 1e-3) == (ref.num_reg_tokens > 0)  # the registers are read


def test_from_timm_ports_a_published_register_architecture():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import timm
    ref = timm.create_model("vit_base_patch16_reg4_gap_256").eval()
    ours = from_timm(ref)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() < 1e-4
    assert ours.reg_token.shape == (1, 4, 768) and ours.cls_token is None


def test_registers_sit_after_the_other_prefix_tokens_and_are_not_pooled():
    torch.manual_seed(0)
    small = {k: v for k, v in TINY.items() if k != "num_classes"}
    vit = VisionTransformer(**small, reg_tokens=3, use_cls_token=False).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens = vit.forward_features(x)
        pooled = vit.forward_head(tokens, pre_logits=True)
    assert tokens.shape[1] == 3 + 16 and vit.num_prefix_tokens == 3
    assert torch.allclose(pooled, vit.fc_norm(tokens[:, 3:].mean(dim=1)))
    deit = VisionTransformer(**small, reg_tokens=2, distillation_token=True)
    assert deit.num_prefix_tokens == 4
    with pytest.raises(ArgumentError, match="^reg_tokens="):
        VisionTransformer(reg_tokens=-1)
