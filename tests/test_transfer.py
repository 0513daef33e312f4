"""Transfer and distillation: published weights (without a network), freezing,
layer-wise learning rates, the distillation loss and `DistillationTrainer`."""

import math
import os
import subprocess
import sys
import warnings
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
import torchvision

from neural_stack.training.run import build_trainer, normalised_as_pretrained
from neural_stack.models import VisionTransformer
from neural_stack.training import (
    Callback,
    CheckpointCallback,
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainConfig,
    apply_overrides,
    build_dataloaders,
    build_model,
    build_optimizer,
    build_scheduler,
)
from neural_stack.training.factory import (
    PretrainedWeightsWarning,
    pretrained_name,
    pretrained_stats,
)
from neural_stack.training.transfer import (
    DistillationTrainer,
    freeze,
    soft_distillation_loss,
)
from neural_stack.validation import ArgumentError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import timm

VIT_TINY = dict(source="timm", patch_size=16, embed_dim=192, num_heads=3, num_layers=12)
SMALL = dict(img_size=16, patch_size=4, embed_dim=24, num_heads=2, num_classes=5)


# ---------------------------------------------------------------- published weights
def test_pretrained_is_refused_up_front_where_no_weights_exist():
    with pytest.raises(ArgumentError, match=r"pretrained=True; expected False with"):
        ModelConfig(pretrained=True)  # source='custom'
    with pytest.raises(
        ArgumentError,
        match=r"pretrained=True; expected an architecture with published timm weights"
        r".*vit_tiny_patch16_224.augreg_in21k_ft_in1k \(embed_dim=192",
    ):
        ModelConfig(source="timm", pretrained=True, **SMALL)
    with pytest.raises(ArgumentError, match="published torchvision weights"):
        ModelConfig(**{**VIT_TINY, "source": "torchvision"}, pretrained=True)
    with pytest.raises(ArgumentError, match="pretrained=True; expected False with"):
        ModelConfig(name="cnn", pretrained=True)


def test_pretrained_names_and_statistics():
    tiny = ModelConfig(**VIT_TINY, img_size=224, pretrained=True)
    assert pretrained_name(tiny) == "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert pretrained_stats(tiny) == ((0.5,) * 3, (0.5,) * 3)
    deit = ModelConfig(**VIT_TINY, img_size=224, distillation_token=True)
    assert pretrained_name(deit) == "deit_tiny_distilled_patch16_224.fb_in1k"
    b16 = ModelConfig(
        source="torchvision", embed_dim=768, num_heads=12, num_layers=12, patch_size=16
    )
    assert pretrained_name(b16) == "vit_b_16"
    mean, std = pretrained_stats(b16)
    assert mean == pytest.approx((0.485, 0.456, 0.406))
    grey = ModelConfig(**VIT_TINY, img_size=224, in_channels=1)
    assert pretrained_stats(grey) == ((0.5,), (0.5,))


def test_timm_weights_offline_warn_and_start_from_random_weights():
    code = (
        "from neural_stack.training import ModelConfig, build_model\n"
        "config = ModelConfig(source='timm', pretrained=True, img_size=32,"
        " patch_size=16, embed_dim=192, num_heads=3, num_layers=12)\n"
        "model = build_model(config)\n"
        "print(type(model).__name__, config.pretrained)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # as a machine without a network
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["VisionTransformer", "False"]
    warning = [line for line in done.stderr.splitlines() if "Warning: " in line]
    assert len(warning) == 1 and "PretrainedWeightsWarning: " in warning[0]
    assert "could not download timm's weights 'vit_tiny_patch16_224" in warning[0]
    assert "starting from random weights" in warning[0]


def test_timm_weights_are_ported_at_the_configured_size(monkeypatch):
    calls = []
    create = timm.create_model

    def published(name, pretrained=False, **kwargs):  # random weights, no download
        calls.append((name, pretrained, kwargs))
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", published)
    config = ModelConfig(
        **VIT_TINY, img_size=32, in_channels=1, num_classes=7, pretrained=True
    )
    model = build_model(config)
    ((name, pretrained, kwargs),) = calls
    assert name == "vit_tiny_patch16_224.augreg_in21k_ft_in1k" and pretrained
    assert (kwargs["img_size"], kwargs["in_chans"], kwargs["num_classes"]) == (32, 1, 7)
    assert isinstance(model, VisionTransformer)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_torchvision_weights_are_resampled_and_get_a_new_head(monkeypatch):
    sources = []

    def published(name, weights=None, **kwargs):  # random weights, no download
        assert weights is not None and name == "vit_b_32"
        sources.append(torchvision.models.vit_b_32(**kwargs).eval())
        return sources[-1]

    monkeypatch.setattr(torchvision.models, "get_model", published)
    config = ModelConfig(
        source="torchvision",
        pretrained=True,
        img_size=64,
        patch_size=32,
        embed_dim=768,
        num_heads=12,
        num_layers=12,
        num_classes=10,
    )
    model = build_model(config)
    (source,) = sources
    assert model.config.img_size == 64 and model.num_classes == 10
    assert torch.equal(
        model.blocks[3].mlp.fc1.weight, source.encoder.layers[3].mlp[0].weight
    )
    assert model.pos_embed.weight.shape == (1, 1 + 2 * 2, 768)  # resampled to 2 x 2
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_torchvision_weights_offline_warn_and_start_from_random_weights(monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    architecture = dict(
        source="torchvision",
        img_size=224,
        patch_size=16,
        embed_dim=768,
        num_heads=12,
        num_layers=12,
    )
    config = ModelConfig(**architecture, pretrained=True)
    torch.manual_seed(0)
    with pytest.warns(
        PretrainedWeightsWarning,
        match=r"could not download torchvision's weights 'vit_b_16' \(URLError: ",
    ):
        model = build_model(config)
    assert config.pretrained is False  # the section says what ran
    torch.manual_seed(0)
    random = build_model(ModelConfig(**architecture))
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), random.state_dict().values())
    )


def test_a_pretrained_run_normalises_as_its_weights_were_trained():
    config = TrainConfig(
        model=ModelConfig(**VIT_TINY, img_size=32, pretrained=True),
        data=DataConfig(dataset="cifar10"),
    )
    run = normalised_as_pretrained(config)
    assert (run.data.mean, run.data.std) == ((0.5,) * 3, (0.5,) * 3)
    assert config.data.mean is None  # the given config is left as it was
    own = apply_overrides(config, ["data.mean=[0.2, 0.2, 0.2]", "data.std=[1, 1, 1]"])
    assert normalised_as_pretrained(own) is own
    scratch = apply_overrides(config, ["model.pretrained=false"])
    assert normalised_as_pretrained(scratch).data.mean is None


def test_data_mean_and_std_replace_the_dataset_statistics():
    _, val = build_dataloaders(DataConfig(dataset="digits", mean=[0.0], std=[1.0]))
    images = torch.cat([x for x, _ in val])
    torch.testing.assert_close(images, val.dataset.images / 255)  # no normalisation
    _, val = build_dataloaders(DataConfig(dataset="digits", mean=[0.5], std=[0.25]))
    torch.testing.assert_close(
        torch.cat([x for x, _ in val]), (val.dataset.images / 255 - 0.5) / 0.25
    )


# ---------------------------------------------------------------- freezing
def twelve_blocks(**kwargs):
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=8, patch_size=4, embed_dim=8, num_heads=2, num_layers=12, **kwargs
    )


def test_freezing_the_first_blocks_freezes_exactly_those():
    model = twelve_blocks()
    report = freeze(model, blocks=2)
    assert {n.split(".")[1] for n in report.frozen} == {"0", "1"}
    assert all(n.startswith(("blocks.0.", "blocks.1.")) for n in report.frozen)
    per_block = sum(p.numel() for p in model.blocks[0].parameters())
    assert report.frozen_values == 2 * per_block
    assert report.frozen_values + report.trainable_values == sum(
        p.numel() for p in model.parameters()
    )
    # blocks 10 and 11 share the prefix "blocks.1" and stay trainable
    assert all(p.requires_grad for p in model.blocks[10].parameters())
    assert "2 tensors" not in str(report) and "trainable" in str(report)


def test_freezing_the_embeddings_includes_both_tokens():
    model = twelve_blocks(distillation_token=True)
    report = freeze(model, embeddings=True)
    assert set(report.frozen) == {
        "cls_token",
        "dist_token",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "pos_embed.weight",
    }


def test_frozen_parameters_do_not_move_and_leave_the_optimizer():
    model = twelve_blocks()
    optimizer = build_optimizer(model, OptimizerConfig(lr=1e-2, weight_decay=0.1))
    scheduler = build_scheduler(
        optimizer, SchedulerConfig(name="cosine"), num_epochs=2, steps_per_epoch=2
    )
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])

    def step():
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()

    step()  # the optimiser now has moment estimates for every parameter
    groups = [
        {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups
    ]
    report = freeze(
        model, embeddings=True, patterns=["blocks.*.mlp.*"], optimizer=optimizer
    )
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(report.frozen) and len(frozen) == 4 + 12 * 4
    held = [p for g in optimizer.param_groups for p in g["params"]]
    assert all(p.requires_grad for p in held)
    assert sum(p.numel() for p in held) == report.trainable_values
    assert all(
        optimizer.state.get(p) is None
        for p in model.parameters()
        if not p.requires_grad
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == (name in frozen), name
    after = [
        {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups
    ]
    assert [g["weight_decay"] for g in after] == [g["weight_decay"] for g in groups]
    assert [g["initial_lr"] for g in after] == [g["initial_lr"] for g in groups]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(blocks=13), r"blocks=13; expected at most 12"),
        (dict(blocks=-1), r"blocks=-1; expected an integer >= 0"),
        (dict(embeddings="yes"), r"embeddings='yes'; expected True or False"),
        (dict(patterns="head.*"), r"patterns='head.\*'; expected a list"),
        (dict(patterns=["heads.*"]), r"patterns='heads.\*'; expected a pattern"),
    ],
)
def test_bad_freeze_arguments(kwargs, match):
    model = twelve_blocks()
    with pytest.raises(ArgumentError, match=match):
        freeze(model, **kwargs)
    assert all(p.requires_grad for p in model.parameters())  # nothing half done


def test_a_cnn_freezes_by_patterns_only():
    cnn = build_model(ModelConfig(name="cnn", img_size=8, in_channels=1))
    with pytest.raises(ArgumentError, match=r"blocks=2; expected 0 unless"):
        freeze(cnn, blocks=2)
    report = freeze(cnn, patterns=["0.*", "1.*"])  # the first convolution and its norm
    assert report.frozen == ["0.weight", "1.weight", "1.bias"]


# ---------------------------------------------------------------- layer-wise decay
def test_layer_decay_scales_each_depth_and_survives_the_schedule():
    model = twelve_blocks()
    optimizer = build_optimizer(model, OptimizerConfig(lr=1e-3, layer_decay=0.5))
    scheduler = build_scheduler(
        optimizer, SchedulerConfig(name="cosine"), num_epochs=1, steps_per_epoch=4
    )
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            depth = model.parameter_depth(names[id(p)])
            assert group["lr"] == pytest.approx(1e-3 * 0.5 ** (13 - depth))
            seen.add(names[id(p)])
    assert seen == set(names.values())
    ratios = [
        g["lr"] / optimizer.param_groups[-1]["lr"] for g in optimizer.param_groups
    ]
    optimizer.step()  # no gradients: nothing moves, as the scheduler expects
    scheduler.step()
    after = [g["lr"] / optimizer.param_groups[-1]["lr"] for g in optimizer.param_groups]
    assert after == pytest.approx(ratios)  # the schedule scales every depth alike


@pytest.mark.parametrize("value", [0, 1.5, "0.5"])
def test_bad_layer_decay(value):
    with pytest.raises(ArgumentError, match=r"layer_decay="):
        OptimizerConfig(layer_decay=value)


def test_layer_decay_needs_a_vit():
    cnn = build_model(ModelConfig(name="cnn", img_size=8, in_channels=1))
    with pytest.raises(ArgumentError, match=r"layer_decay=0.7; expected 1.0 unless"):
        build_optimizer(cnn, OptimizerConfig(layer_decay=0.7))


# ---------------------------------------------------------------- distillation
DIGITS = TrainConfig(
    model=ModelConfig(
        img_size=8, patch_size=4, in_channels=1, embed_dim=16, num_heads=2, num_layers=1
    ),
    scheduler=SchedulerConfig(name="none"),
    data=DataConfig(dataset="digits", batch_size=300),
    num_epochs=2,
    device="cpu",
)


def cnn_teacher():
    torch.manual_seed(5)
    return build_model(ModelConfig(name="cnn", img_size=8, in_channels=1, embed_dim=8))


def distiller(config=DIGITS, teacher=None, callbacks=(), **kwargs):
    teacher = cnn_teacher() if teacher is None else teacher
    return build_trainer(
        config,
        callbacks,
        trainer_class=DistillationTrainer,
        teacher_model=teacher,
        **kwargs,
    )


def test_soft_distillation_loss_is_the_formula():
    torch.manual_seed(0)
    s, t = torch.randn(32, 7, dtype=torch.float64), torch.randn(32, 7)
    for T in (0.5, 1.0, 4.0):
        p_t = F.softmax(t.double() / T, dim=-1)
        kl = (p_t * (p_t.log() - F.log_softmax(s / T, dim=-1))).sum(-1).mean()
        torch.testing.assert_close(
            soft_distillation_loss(s, t, T), (kl * T * T).float()
        )
    assert soft_distillation_loss(t, t) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match=r"teacher's logits \[32, 5\] and the stu"):
        soft_distillation_loss(s, t[:, :5])
    with pytest.raises(ArgumentError, match="temperature=0"):
        soft_distillation_loss(s, t, temperature=0)


@pytest.mark.parametrize(
    "token,kind", [(False, "soft"), (True, "soft"), (True, "hard")]
)
def test_the_trainers_loss_against_a_direct_computation(token, kind):
    config = apply_overrides(DIGITS, [f"model.distillation_token={token}"])
    trainer = distiller(config, alpha=0.3, temperature=2.0, distillation=kind)
    trainer._prepare()
    student, teacher = trainer.model.train(), trainer.teacher
    x, y = next(iter(trainer.train_loader))
    loss = trainer.compute_loss(trainer.forward(x), y)
    with torch.no_grad():
        z_t = teacher(x)
    if token:
        cls, dist = student(x, separate_heads=True)
    else:
        cls = dist = student(x)
    if kind == "soft":
        term = soft_distillation_loss(dist, z_t, temperature=2.0)
    else:
        term = F.cross_entropy(dist, z_t.argmax(-1))
    expected = 0.7 * F.cross_entropy(cls, y) + 0.3 * term
    torch.testing.assert_close(loss, expected)
    student.eval()  # validation: the plain loss of the averaged heads
    with torch.no_grad():
        out = trainer.forward(x)
        torch.testing.assert_close(
            trainer.compute_loss(out, y), F.cross_entropy(out, y)
        )


def test_the_teacher_is_never_updated_and_stays_in_eval_mode():
    teacher = cnn_teacher().train()  # batch norm: training would move its statistics
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = distiller(teacher=teacher, distillation="hard")
    result = trainer.fit()
    assert not teacher.training
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert 0 <= result["final"]["train/accuracy"] <= 1


def test_distillation_changes_training_and_validation_is_the_students():
    plain = build_trainer(DIGITS)
    plain.fit()
    taught = distiller(alpha=0.9)
    taught.fit()
    a = dict(plain.model.named_parameters())
    assert any(not torch.equal(p, a[n]) for n, p in taught.model.named_parameters())
    # the same student weights give the same validation with either trainer
    plain.model.load_state_dict(taught.model.state_dict())
    assert plain.validate() == taught.validate()


def test_a_distillation_run_resumes_exactly(tmp_path):
    class StopAfter(Callback):
        def on_epoch_end(self, state):
            state.should_stop = state.epoch + 1 == 2

    config = apply_overrides(DIGITS, ["num_epochs=4", "model.distillation_token=true"])
    straight = distiller(config, distillation="hard")
    straight.fit()
    callbacks = [CheckpointCallback(tmp_path), StopAfter()]
    distiller(config, callbacks=callbacks, distillation="hard").fit()
    resumed = distiller(config, distillation="hard")
    resumed.fit(resume_from=tmp_path / "last.pt")
    for (name, p), q in zip(
        straight.model.named_parameters(), resumed.model.parameters(), strict=True
    ):
        assert torch.equal(p, q), name


def test_distillation_trainer_refusals():
    with pytest.raises(ArgumentError, match=r"temperature=-1; expected"):
        distiller(temperature=-1)
    with pytest.raises(
        ArgumentError, match=r"alpha=1.5; expected a number in \[0, 1\]"
    ):
        distiller(alpha=1.5)
    with pytest.raises(ArgumentError, match=r"distillation='medium'; expected one of"):
        distiller(distillation="medium")
    with pytest.raises(ArgumentError, match=r"teacher_model='a model'; expected an nn"):
        distiller(teacher="a model")
    trainer = build_trainer(DIGITS)
    with pytest.raises(ArgumentError, match=r"teacher_model='VisionTransformer'"):
        DistillationTrainer(
            teacher_model=trainer.model,  # the student itself: it would move
            model=trainer.model,
            optimizer=trainer.optimizer,
            train_loader=trainer.train_loader,
        )
    five = build_model(
        ModelConfig(name="cnn", img_size=8, in_channels=1, num_classes=5)
    )
    with pytest.raises(ValueError, match=r"teacher's logits \[300, 5\]"):
        distiller(teacher=five, distillation="hard").fit()


def test_the_published_weights_cell_runs_with_a_mocked_download(monkeypatch):
    import socket
    from pathlib import Path

    import IPython.display
    import nbformat
    import plotly.graph_objects as go

    chapter = Path(__file__).parents[1] / "nbs" / "14_transfer_distillation.ipynb"
    cells = nbformat.read(chapter, as_version=4).cells
    at = next(i for i, c in enumerate(cells) if "def reachable(" in c.source)
    cell, check = cells[at].source, cells[at + 1].source
    assert "published_run" in check and "assert" in check

    class Connection:  # a socket that connected: huggingface.co "answers"
        def close(self):
            pass

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Connection())
    downloads, figures = [], []
    create = timm.create_model

    def download(name, pretrained=False, **kwargs):  # random weights, no network
        downloads.append((name, pretrained))
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", download)
    monkeypatch.setattr(IPython.display, "display", figures.append)
    prelude = (
        "import math, timm, torch\n"
        "from neural_stack.training import ModelConfig, TrainConfig, OptimizerConfig\n"
        "from neural_stack.training import DataConfig, build_model\n"
        "from neural_stack.training.factory import pretrained_stats\n"
    )
    namespace = {}
    exec(prelude + cell + "\n" + check, namespace)  # the cell, then its check
    published = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    # published weights twice, the photo's model and the digits' (the rest: meta builds)
    assert [name for name, weights in downloads if weights] == [published] * 2
    (figure,) = figures
    assert isinstance(figure, go.Figure) and figure.layout.title.text
    run = namespace["published_run"]
    assert run.config.model.pretrained and run.config.data.img_size == 112
    assert math.isfinite(run.final["val/accuracy"])
