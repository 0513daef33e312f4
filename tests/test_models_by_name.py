"""Models named as their library names them (`source: timm` / `torchvision`), starting
from a file's weights (`init_from`) and the frozen backbone (`freeze`). Nothing here
downloads: published weights are simulated by patching the libraries' loaders."""

import random
import re
import warnings

import pytest
import torch
import torchvision
from torch import nn

from neural_stack.models import VisionTransformer, from_timm
from neural_stack.training import factory
from neural_stack.training.factory import (
    ModelConfig,
    PretrainedWeightsWarning,
    WeightsReport,
    build_model,
    build_model_and_report,
    count_parameters,
    load_weights,
    model_names,
    resolve_model,
    weights_file,
)
from neural_stack.validation import ArgumentError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import timm

SMALL = dict(img_size=32, in_channels=1, num_classes=5)


def timm_params(name: str, **kwargs) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in timm.create_model(name, **kwargs).parameters())


def chosen_vits() -> list[str]:
    "A few small timm ViT names of each kind: tiny/small, patch 16/32, DeiT distilled."
    names = timm.list_models("vit_*") + timm.list_models("deit_*")
    picks = [
        next(n for n in names if n.startswith("vit_tiny_patch16_")),
        next(n for n in names if n.startswith("vit_small_patch32_")),
        next(n for n in names if n.startswith("deit_tiny_distilled_patch16_")),
    ]
    return picks + random.Random(0).sample(
        [n for n in names if re.fullmatch(r"vit_(tiny|small)_patch(16|32)_\d+", n)], 2
    )


@pytest.mark.parametrize("name", chosen_vits())
def test_a_timm_vit_by_name_is_ours_with_timms_parameter_count(name):
    config = resolve_model(ModelConfig(name=name, source="timm", img_size=64))
    assert config.is_vit()
    with torch.device("meta"):
        model = build_model(config)
    assert isinstance(model, VisionTransformer)
    expected = timm_params(name, img_size=64, num_classes=10)
    if config.distillation_token:  # its positional row is folded into the token
        expected -= config.embed_dim
    assert count_parameters(config) == expected
    assert sum(p.numel() for p in model.parameters()) == expected
    assert config.distillation_token == ("distilled" in name)


def test_fields_are_derived_without_a_download_or_a_random_draw():
    torch.manual_seed(0)
    config = ModelConfig(
        name="vit_small_patch32_224.augreg_in21k", source="timm", **SMALL
    )
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after), "resolving drew random numbers"
    assert (config.patch_size, config.embed_dim, config.num_heads) == (32, 384, 6)
    assert (config.num_layers, config.mlp_ratio, config.use_cls_token) == (
        12,
        4.0,
        True,
    )
    assert config.img_size == 32 and config.in_channels == 1  # ours, passed on


def test_logits_equal_timms_with_the_same_weights():
    name = "vit_tiny_patch16_224"
    torch.manual_seed(0)
    ours = build_model(ModelConfig(name=name, source="timm", **SMALL)).eval()
    torch.manual_seed(0)  # the same draws: timm's own initialisation
    theirs = timm.create_model(name, img_size=32, in_chans=1, num_classes=5).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() < 1e-5


def test_other_timm_models_are_used_as_timm_builds_them():
    resnet = build_model(ModelConfig(name="resnet26", source="timm", **SMALL))
    assert type(resnet).__module__.startswith("timm.")  # timm's, not the built-in one
    assert resnet(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    hybrid = ModelConfig(name="vit_tiny_r_s16_p8_224", source="timm", **SMALL)
    assert not hybrid.is_vit()  # a ResNet stem: no port, timm's own model
    assert count_parameters(hybrid) == timm_params(
        "vit_tiny_r_s16_p8_224", img_size=32, in_chans=1, num_classes=5
    )


def test_torchvision_names():
    vit = ModelConfig(name="vit_b_32", source="torchvision", img_size=64)
    assert (vit.patch_size, vit.embed_dim, vit.num_layers) == (32, 768, 12)
    with torch.device("meta"):
        expected = sum(
            p.numel()
            for p in torchvision.models.vit_b_32(
                image_size=64, num_classes=10
            ).parameters()
        )
    assert count_parameters(vit) == expected
    net = build_model(ModelConfig(name="resnet34", source="torchvision", num_classes=4))
    assert isinstance(net, torchvision.models.ResNet) and net.fc.out_features == 4
    with pytest.raises(ArgumentError, match=r"^in_channels=1; expected 3 for torch"):
        ModelConfig(name="resnet34", source="torchvision", in_channels=1)


def test_built_in_names_are_unchanged():
    for name in ("vit", "resnet18", "cnn"):
        torch.manual_seed(0)
        config = ModelConfig(
            name=name, img_size=8, embed_dim=8, num_heads=2, num_layers=1
        )
        torch.manual_seed(0)
        model = build_model(config)
        torch.manual_seed(0)
        direct = factory.MODELS[name].build(config)
        for a, b in zip(model.state_dict().values(), direct.state_dict().values()):
            assert torch.equal(a, b)
    with pytest.raises(
        ArgumentError, match=r"^source='timm'; expected one of 'custom'$"
    ):
        ModelConfig(name="resnet18", source="timm")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="vitt"), r"^name='vitt'; expected one of 'vit', 'resnet18', 'cnn'"),
        (
            dict(name="vitt"),
            r"any timm model name with source='timm'.*did you mean 'vit'",
        ),
        (dict(name="deit_tiny_patch16_224"), r"is a timm model: set source='timm'$"),
        (
            dict(name="vit_tiny_patch16_22", source="timm"),
            r"did you mean 'vit_tiny_patch16_224'",
        ),
        (dict(name="vit_tiny_patch16_224.nope", source="timm"), r"^name="),
        (dict(name="vit_b_61", source="torchvision"), r"did you mean 'vit_b_16'"),
        (
            dict(name="vit_tiny_patch16_224", source="timm", embed_dim=96),
            r"^embed_dim=96; expected 192, vit_tiny_patch16_224's own",
        ),
        (
            dict(name="vit_b_16", source="torchvision", in_channels=1),
            r"^in_channels=1; expected 3 with source='torchvision'",
        ),
    ],
)
def test_bad_names_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ArgumentError, match=message) as error:
        ModelConfig(**kwargs)
    assert "\n" not in str(error.value)


def test_model_names_lists_the_built_ins_and_the_libraries():
    rows = dict(model_names())
    assert {"vit", "resnet18", "cnn"} <= set(rows)
    assert "timm.list_models()" in rows["<timm name>"]
    assert all("\n" not in line and len(line) < 200 for line in rows.values())


# ------------------------------------------------------------ published weights
NAMED = dict(name="vit_tiny_patch16_224.augreg_in21k", source="timm", num_classes=5)


def fake_timm(monkeypatch, online: bool) -> dict:
    "timm.create_model with a fake download: fixed weights online, an OSError offline."
    create, published = timm.create_model, {}

    def create_model(name, pretrained=False, **kwargs):
        model = create(name, pretrained=False, **kwargs)
        if pretrained and not online:
            raise OSError("no network")
        if pretrained:
            generator = torch.Generator().manual_seed(7)
            for k, v in model.state_dict().items():
                published[k] = torch.randn(v.shape, generator=generator)
            model.load_state_dict(published)
        return model

    monkeypatch.setattr(timm, "create_model", create_model)
    return published


def test_published_weights_are_ported(monkeypatch):
    published = fake_timm(monkeypatch, online=True)
    model = build_model(ModelConfig(**NAMED, img_size=224, pretrained=True))
    state = model.state_dict()
    assert torch.equal(
        state["patch_embed.proj.weight"], published["patch_embed.proj.weight"]
    )
    assert torch.equal(
        state["blocks.11.mlp.fc2.weight"], published["blocks.11.mlp.fc2.weight"]
    )
    assert torch.equal(state["pos_embed.weight"], published["pos_embed"])


def test_offline_pretrained_warns_and_starts_from_random_weights(monkeypatch):
    fake_timm(monkeypatch, online=False)
    config = ModelConfig(**NAMED, img_size=32, pretrained=True, freeze="backbone")
    torch.manual_seed(0)
    with pytest.warns(PretrainedWeightsWarning) as caught:
        model = build_model(config)
    message = str(caught[0].message)
    assert "\n" not in message and "vit_tiny_patch16_224.augreg_in21k" in message
    assert "HF_HOME" in message and "random weights" in message
    assert config.pretrained is False and config.freeze == "none"  # the truth
    assert all(p.requires_grad for p in model.parameters())
    torch.manual_seed(0)
    plain = build_model(ModelConfig(**NAMED, img_size=32))
    for a, b in zip(model.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)  # the draws of pretrained=false


# ---------------------------------------------------------------------- init_from
VIT = dict(img_size=16, patch_size=4, embed_dim=16, num_heads=2, num_layers=2)


def test_init_from_a_checkpoint_resamples_positions_and_replaces_the_head(tmp_path):
    torch.manual_seed(0)
    source = build_model(ModelConfig(**VIT, num_classes=10))
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "best.pt")
    torch.save(source.state_dict(), tmp_path / "model.pt")  # wins over best.pt
    config = ModelConfig(
        **{**VIT, "img_size": 28}, num_classes=5, init_from=str(tmp_path)
    )
    torch.manual_seed(1)
    model, report = build_model_and_report(config)
    torch.manual_seed(1)
    fresh = build_model(ModelConfig(**{**VIT, "img_size": 28}, num_classes=5))
    assert report.path == str(tmp_path) and len(report.sha256) == 12
    assert report.grid == ((4, 4), (7, 7)) and report.classes == (10, 5)
    assert "positions resampled 4x4 -> 7x7; head replaced: 10 -> 5 classes" in str(
        report
    )
    assert torch.equal(model.head.weight, fresh.head.weight)  # its own random draw
    assert torch.equal(model.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    expected = source.resample(28).pos_embed.weight
    assert torch.equal(model.pos_embed.weight, expected)
    assert weights_file(tmp_path).name == "model.pt"


def test_init_from_an_equal_model_loads_every_tensor(tmp_path):
    source = build_model(ModelConfig(name="cnn", img_size=8, embed_dim=8))
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = build_model(ModelConfig(name="cnn", img_size=8, embed_dim=8))
    report = load_weights(model, tmp_path / "w.pt")
    assert isinstance(report, WeightsReport) and report.grid is report.classes is None
    assert str(report).endswith("every tensor as saved")
    for a, b in zip(model.state_dict().values(), source.state_dict().values()):
        assert torch.equal(a, b)


def test_init_from_refusals(tmp_path):
    with pytest.raises(
        ArgumentError, match=r"^init_from='nowhere'; expected a file or"
    ):
        ModelConfig(init_from="nowhere")
    with pytest.raises(ArgumentError, match=r"expected a folder holding model.pt"):
        ModelConfig(init_from=str(tmp_path))
    torch.save(build_model(ModelConfig(**VIT)).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ArgumentError, match=r"^init_from=.*one start only"):
        ModelConfig(**NAMED, pretrained=True, init_from=str(tmp_path / "w.pt"))
    wider = ModelConfig(**{**VIT, "embed_dim": 32}, init_from=str(tmp_path / "w.pt"))
    with pytest.raises(
        ArgumentError,
        match=r"cls_token is \[1, 1, 16\] in the file, "
        r"\[1, 1, 32\] in the model$",
    ):
        build_model(wider)
    (tmp_path / "junk.pt").write_text("not weights")
    with pytest.raises(ArgumentError, match=r"^init_from=.*a file torch.load reads"):
        load_weights(nn.Linear(1, 1), tmp_path / "junk.pt")


# ------------------------------------------------------------------------- freeze
def test_freeze_backbone_trains_only_the_final_norm_and_the_head(tmp_path):
    torch.save(build_model(ModelConfig(**VIT)).state_dict(), tmp_path / "w.pt")
    model = build_model(
        ModelConfig(**VIT, init_from=str(tmp_path / "w.pt"), freeze="backbone")
    )
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    with pytest.raises(
        ArgumentError, match=r"^freeze='backbone'; expected 'none' without"
    ):
        ModelConfig(**VIT, freeze="backbone")
    with pytest.raises(ArgumentError, match=r"^freeze='backbone'; expected 'none' for"):
        ModelConfig(name="cnn", init_from=str(tmp_path / "w.pt"), freeze="backbone")
    with pytest.raises(ArgumentError, match=r"^freeze='all'; expected one of 'none'"):
        ModelConfig(freeze="all")
