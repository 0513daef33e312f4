"""The factory: models by name and source, parameter groups, schedules against closed
forms, the loss."""

import math
import warnings

import pytest
import torch
import torchvision
from torch import nn

from neural_stack.models import VisionTransformer
from neural_stack.training.factory import (
    ModelTooLargeError,
    check_model_size,
    count_parameters,
    parameter_limit,
    MODELS,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    build_criterion,
    build_model,
    build_optimizer,
    build_scheduler,
    parameter_groups,
    register_model,
)
from neural_stack.validation import ArgumentError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    from timm.optim._param_groups import param_groups_weight_decay

SMALL = dict(
    img_size=16, patch_size=4, embed_dim=48, num_heads=3, num_layers=2, num_classes=5
)


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("source", ["custom", "timm", "torchvision"])
def test_vit_from_every_source_is_ours_with_the_same_architecture(source):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL, source=source))
    assert isinstance(model, VisionTransformer)
    assert model.config == ModelConfig(**SMALL).vit_config()
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)


def test_timm_source_reproduces_timms_initialisation():
    torch.manual_seed(0)
    ours = build_model(ModelConfig(**SMALL, source="timm", drop_path=0.1))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = TimmViT(
            img_size=16,
            patch_size=4,
            embed_dim=48,
            depth=2,
            num_heads=3,
            num_classes=5,
            drop_path_rate=0.1,
        ).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref(x), atol=1e-5, rtol=0)


def test_img_size_as_a_square_pair_is_accepted():
    assert ModelConfig(**{**SMALL, "img_size": [16, 16]}).img_size == 16
    assert ModelConfig(**{**SMALL, "img_size": (16, 16)}).img_size == 16


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(img_size=[16, 24]),
            r"img_size=\[16, 24\]; expected an integer, or \[h, w\] with h == w",
        ),
        (dict(img_size=[16]), r"img_size=\[16\]; expected an integer, or \[h, w\]"),
        (dict(name="vit-huge"), r"name='vit-huge'; expected one of 'vit', 'resnet18'"),
        (
            dict(source="keras"),
            r"source='keras'; expected one of 'custom', 'timm', 'torchvision'",
        ),
        (
            dict(name="resnet18", source="timm"),
            r"source='timm'; expected one of 'custom'",
        ),
        (dict(pretrained=True), r"pretrained=True; expected False"),
        (dict(pretrained="yes"), r"pretrained='yes'; expected True or False"),
        (
            dict(source="torchvision", in_channels=1),
            r"in_channels=1; expected 3 with source='torchvision'",
        ),
        (
            dict(source="torchvision", use_cls_token=False),
            r"use_cls_token=False; expected True with",
        ),
        (
            dict(source="torchvision", drop_path=0.1),
            r"drop_path=0.1; expected 0.0 with source='torchvision'",
        ),
        (
            dict(source="timm", positional_embedding="learned-2d"),
            r"expected 'learned-1d' or 'none' with",
        ),
        (
            dict(name="resnet18", num_classes=0),
            r"num_classes=0; expected a positive integer",
        ),
        (dict(embed_dim=50), r"embed_dim=50; expected a multiple of num_heads=3"),
    ],
)
def test_bad_model_sections(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        ModelConfig(**{**SMALL, **kwargs})


def test_a_mutated_model_section_is_checked_when_built():
    config = ModelConfig(**SMALL)
    config.num_heads = 5
    with pytest.raises(
        ArgumentError, match=r"embed_dim=48; expected a multiple of num_heads=5"
    ):
        build_model(config)


def test_resnet18_small_stem():
    model = build_model(ModelConfig(name="resnet18", in_channels=1, num_classes=10))
    assert (
        model.conv1.kernel_size == (3, 3)
        and model.conv1.stride == (1, 1)
        and model.conv1.in_channels == 1
    )
    assert isinstance(model.maxpool, nn.Identity)
    reference = torchvision.models.resnet18(num_classes=10)
    assert (
        sum(p.numel() for p in reference.parameters())
        - sum(p.numel() for p in model.parameters())
        == 7 * 7 * 3 * 64 - 3 * 3 * 64
    )
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_registering_a_model_is_one_entry():
    @register_model("test-linear")
    def build(config):
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(config.in_channels * config.img_size**2, config.num_classes),
        )

    try:
        model = build_model(ModelConfig(**SMALL, name="test-linear"))
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    finally:
        del MODELS["test-linear"]


# ---------------------------------------------------------------- optimiser
def no_decay_names(model, groups):
    ids = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_weight_decay_skips_norms_biases_tokens_and_positions():
    model = VisionTransformer(**SMALL, positional_embedding="learned-2d")
    names = no_decay_names(model, parameter_groups(model, 0.1))
    expected = {
        n
        for n, p in model.named_parameters()
        if n.endswith("bias")
        or "norm" in n
        or n.startswith(("pos_embed.", "cls_token"))
    }
    assert names == expected
    assert {
        "pos_embed.row_weight",
        "pos_embed.col_weight",
        "pos_embed.cls_weight",
        "cls_token",
    } <= names


def test_parameter_groups_equal_timms():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = TimmViT(
            img_size=16,
            patch_size=4,
            embed_dim=48,
            depth=2,
            num_heads=3,
            num_classes=5,
            global_pool="avg",
            class_token=False,
        )
    from neural_stack.models import from_timm

    ours = from_timm(ref)
    theirs = param_groups_weight_decay(
        ref, 0.05, no_weight_decay_list=ref.no_weight_decay()
    )
    mine = parameter_groups(ours, 0.05)
    for wd in (0.05, 0.0):
        count = lambda groups: sum(
            p.numel() for g in groups if g["weight_decay"] == wd for p in g["params"]
        )
        assert count(theirs) == count(mine)


def test_frozen_parameters_are_left_out_and_batchnorm_does_not_decay():
    model = build_model(ModelConfig(name="resnet18", in_channels=1, num_classes=10))
    model.conv1.weight.requires_grad_(False)
    groups = parameter_groups(model, 0.1)
    held = {id(p) for g in groups for p in g["params"]}
    assert id(model.conv1.weight) not in held
    assert {"bn1.weight", "bn1.bias", "fc.bias"} <= no_decay_names(model, groups)
    assert "fc.weight" not in no_decay_names(model, groups)


@pytest.mark.parametrize(
    "name,kind",
    [
        ("adamw", torch.optim.AdamW),
        ("adam", torch.optim.Adam),
        ("sgd", torch.optim.SGD),
    ],
)
def test_build_optimizer(name, kind):
    model = VisionTransformer(**SMALL)
    opt = build_optimizer(
        model,
        OptimizerConfig(
            name=name, lr=0.01, weight_decay=0.1, betas=(0.8, 0.9), momentum=0.5
        ),
    )
    assert type(opt) is kind and [g["weight_decay"] for g in opt.param_groups] == [
        0.1,
        0.0,
    ]
    assert all(g["lr"] == 0.01 for g in opt.param_groups)
    assert opt.param_groups[0].get("betas", (0.8, 0.9)) == (0.8, 0.9)
    assert opt.param_groups[0].get("momentum", 0.5) == 0.5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="lamb"), r"name='lamb'; expected one of 'adamw', 'adam', 'sgd'"),
        (dict(lr=0), r"lr=0; expected a finite number > 0"),
        (dict(lr="fast"), r"lr='fast'; expected a finite number > 0"),
        (dict(weight_decay=-1), r"weight_decay=-1; expected a finite number >= 0"),
        (dict(betas=(0.9,)), r"betas=\(0.9,\); expected two numbers in \[0, 1\)"),
        (dict(betas=(0.9, 1.0)), r"betas\[1\]=1.0; expected a probability in \[0, 1\)"),
        (dict(momentum=1.0), r"momentum=1.0; expected a finite number >= 0 and < 1"),
    ],
)
def test_bad_optimizer_sections(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        OptimizerConfig(**kwargs)


# ---------------------------------------------------------------- schedules
def rates(config, num_epochs=6, steps_per_epoch=10, extra=15, lr=0.5, groups=1):
    params = [nn.Parameter(torch.zeros(1)) for _ in range(groups)]
    opt = torch.optim.SGD(
        [{"params": [p], "lr": lr * (i + 1)} for i, p in enumerate(params)], lr=lr
    )
    scheduler = build_scheduler(opt, config, num_epochs, steps_per_epoch)
    out = []
    for _ in range(num_epochs * steps_per_epoch + extra):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step()
    return out


def cosine_warmup(t, base, W, T, eta_min):
    if t < W:
        return base * (t + 1) / (W + 1)
    if t <= W + T:
        return eta_min + (base - eta_min) * (1 + math.cos(math.pi * (t - W) / T)) / 2
    return eta_min


@pytest.mark.parametrize("warmup", [0, 1, 2.5])
@pytest.mark.parametrize("eta_min", [0.0, 0.05])
def test_cosine_warmup_matches_its_closed_form_for_every_group_and_past_the_end(
    warmup, eta_min
):
    name = "cosine_warmup" if warmup else "cosine"
    got = rates(
        SchedulerConfig(name=name, warmup_epochs=warmup, eta_min=eta_min), groups=2
    )
    W = round(warmup * 10)
    for t, row in enumerate(got):
        for g, lr in enumerate(row):
            assert lr == pytest.approx(
                cosine_warmup(t, 0.5 * (g + 1), W, 60 - W, eta_min), abs=1e-12
            )
    assert all(row == got[-1] for row in got[60:])  # the floor holds after the end


def test_cosine_with_t_max_shorter_than_the_run():
    got = [
        row[0] for row in rates(SchedulerConfig(name="cosine", T_max=3, eta_min=0.01))
    ]
    for t, lr in enumerate(got):
        assert lr == pytest.approx(cosine_warmup(t, 0.5, 0, 30, 0.01), abs=1e-12)


def test_step_and_none():
    got = [
        row[0] for row in rates(SchedulerConfig(name="step", step_size=2, gamma=0.5))
    ]
    assert got == [0.5 * 0.5 ** (t // 20) for t in range(len(got))]
    assert {row[0] for row in rates(SchedulerConfig(name="none"))} == {0.5}


def test_warmup_longer_than_the_schedule_is_refused():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(
        ArgumentError, match=r"warmup_epochs=6; expected fewer than the 6 epochs"
    ):
        build_scheduler(
            opt, SchedulerConfig(name="cosine_warmup", warmup_epochs=6), 6, 10
        )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(name="plateau"),
            r"name='plateau'; expected one of 'none', 'step', 'cosine', 'cosine_warm",
        ),
        (dict(step_size=0), r"step_size=0; expected a positive integer"),
        (dict(gamma=0), r"gamma=0; expected a finite number > 0"),
        (dict(T_max=0), r"T_max=0; expected a positive integer"),
        (dict(eta_min=-0.1), r"eta_min=-0.1; expected a finite number >= 0"),
        (dict(warmup_epochs=-1), r"warmup_epochs=-1; expected a finite number >= 0"),
    ],
)
def test_bad_scheduler_sections(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        SchedulerConfig(**kwargs)


# ---------------------------------------------------------------- loss
def test_label_smoothing_against_the_formula():
    torch.manual_seed(0)
    logits, targets, eps = torch.randn(16, 7), torch.randint(7, (16,)), 0.2
    log_p = logits.log_softmax(-1)
    expected = (
        (1 - eps) * -log_p[torch.arange(16), targets] + eps * -log_p.mean(-1)
    ).mean()
    torch.testing.assert_close(build_criterion(eps)(logits, targets), expected)
    with pytest.raises(
        ArgumentError, match=r"label_smoothing=1.0; expected a probability in \[0, 1\)"
    ):
        build_criterion(1.0)


def test_cnn_is_a_small_vgg_style_network():
    config = ModelConfig(
        name="cnn", img_size=8, in_channels=1, num_classes=10, embed_dim=64
    )
    model = build_model(config)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1, 32),
        (32, 32),
        (32, 64),
        (64, 64),
    ]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    # odd sizes and colour images work too: global average pooling takes any grid
    colour = build_model(ModelConfig(name="cnn", img_size=28, embed_dim=16))
    assert colour(torch.randn(2, 3, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(img_size=2), r"img_size=2; expected an integer >= 4"),
        (dict(num_classes=0), r"num_classes=0; expected a positive integer"),
    ],
)
def test_bad_cnn_sections(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        ModelConfig(name="cnn", **kwargs)


def test_parameters_are_counted_on_the_meta_device_without_drawing_random_numbers():
    vit_b = ModelConfig(
        img_size=224,
        patch_size=16,
        embed_dim=768,
        num_heads=12,
        num_layers=12,
        num_classes=1000,
    )
    for source in ("custom", "timm", "torchvision"):
        vit_b.source = source
        torch.manual_seed(0)
        assert count_parameters(vit_b) == 86_567_656  # torchvision's and timm's count
        after_count = torch.rand(3)
        torch.manual_seed(0)
        assert torch.equal(torch.rand(3), after_count), source


def test_parameter_limit_raises_the_limit_in_its_block_only():
    wide = ModelConfig(img_size=8, in_channels=1, embed_dim=256, num_heads=4)
    count = check_model_size(wide)
    with (
        parameter_limit(count - 1),
        pytest.raises(ModelTooLargeError, match=r"more than MAX_PARAMETERS="),
    ):
        build_model(wide)
    assert check_model_size(wide) == count  # the default limit is back
    with pytest.raises(ValueError, match=r"limit=0; expected a positive integer"):
        with parameter_limit(0):
            pass


def test_a_swin_builds_from_the_model_section_and_its_fields_are_checked():
    from neural_stack.models import SwinTransformer

    section = dict(
        name="swin", img_size=28, in_channels=1, patch_size=2, embed_dim=24,
        num_heads=2, depths=(2, 2), window_size=7, mlp_ratio=2.0,
    )  # fmt: skip
    model = build_model(ModelConfig(**section))
    assert isinstance(model, SwinTransformer)
    assert [s.blocks[0].attn.num_heads for s in model.layers] == [2, 4]
    groups = parameter_groups(model, 0.05)
    exempt = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    table = model.layers[0].blocks[0].attn.relative_position_bias_table
    assert id(table) in exempt
    for field, value, named in (
        ("window_size", 5, "window_size"),
        ("depths", (2, 0), "depths"),
        ("depths", (2, 2, 2), r"img_size / patch_size"),  # 14 halves once only
        ("num_heads", 0, "num_heads"),
    ):
        with pytest.raises(ArgumentError, match=f"^{named}="):
            ModelConfig(**{**section, field: value}).validate()
