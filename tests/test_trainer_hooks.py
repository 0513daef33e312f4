"""The trainer's hooks around the backward pass, the optimiser step and validation;
`Trainer.validate` on any model and loader; top-5 accuracy; soft targets; and the
EMA callback: its update rule, its metrics, its checkpoints and an exact resume."""

import csv
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from neural_stack.models import VisionTransformer
from neural_stack.training.callbacks import (
    CheckpointCallback,
    CSVLogger,
    EarlyStoppingCallback,
    EMACallback,
)
from neural_stack.training.trainer import (
    Callback,
    Trainer,
    load_checkpoint,
    target_classes,
)
from neural_stack.validation import ArgumentError


def data(n=48, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(n, 1, 8, 8, generator=g), torch.randint(classes, (n,), generator=g)
    )


def vit(classes=3, **kwargs):
    torch.manual_seed(0)
    size = {"embed_dim": 16, "num_heads": 2, "num_layers": 1}
    return VisionTransformer(
        img_size=8,
        patch_size=2,
        in_channels=1,
        num_classes=classes,
        **{**size, **kwargs},
    )


def trainer_for(model, train, val=None, callbacks=(), epochs=1, **kwargs):
    return Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        train,
        val,
        callbacks=callbacks,
        device="cpu",
        num_epochs=epochs,
        **kwargs,
    )


def shuffled(dataset, batch_size=16):
    "A training loader with a generator of its own, which checkpoints keep."
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(1),
    )


HOOKS = [name for name in vars(Callback) if name.startswith("on_")]


class Recorder(Callback):
    "Records every hook it is called at, with what the test needs to check it."

    def __init__(self):
        self.calls, self.losses, self.steps, self.seen_metrics = [], [], [], []

    def record(self, hook, state, *args):
        self.calls.append(hook)
        if hook == "on_before_backward":
            (loss,) = args
            self.losses.append((loss.requires_grad, loss.detach().clone()))
        elif hook == "on_after_optimizer_step":
            self.steps.append(state.step)
        elif hook == "on_validation_end":
            self.seen_metrics.append(dict(state.metrics))


for _hook in HOOKS:
    setattr(
        Recorder,
        _hook,
        lambda self, state, *args, hook=_hook: self.record(hook, state, *args),
    )


# --- hooks


def test_hooks_order_and_counts_per_epoch():
    recorder = Recorder()
    # 5 batches an epoch, accumulated by 2: steps after batches 2, 4 and the last, 5
    trainer = trainer_for(
        vit(),
        DataLoader(data(n=40), batch_size=8),
        DataLoader(data(n=16, seed=1), batch_size=8),
        [recorder],
        epochs=2,
        grad_accum_steps=2,
    )
    trainer.fit()
    step, batch = "on_after_optimizer_step", ["on_batch_begin", "on_before_backward"]
    epoch = [
        "on_epoch_begin",
        *batch,
        "on_batch_end",
        *batch,
        step,
        "on_batch_end",
        *batch,
        "on_batch_end",
        *batch,
        step,
        "on_batch_end",
        *batch,
        step,
        "on_batch_end",
        "on_validation_begin",
        "on_validation_end",
        "on_epoch_end",
    ]
    assert recorder.calls == ["on_train_begin", *epoch, *epoch, "on_train_end"]
    assert recorder.steps == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]  # `state.step` counts the step just taken
    # the loss handed over has its graph, and is the batch's mean loss the step reports
    assert all(grad for grad, _ in recorder.losses) and len(recorder.losses) == 10
    assert torch.equal(recorder.losses[-1][1], trainer.state.batch_output["loss"])
    # at the end of validation, the epoch's training and validation metrics are there
    first = recorder.seen_metrics[0]
    assert first["epoch"] == 1 and {"train/loss", "val/loss", "val/accuracy"} <= set(
        first
    )
    assert "lr" not in first  # what follows validation comes after the hook


def test_no_validation_hooks_without_a_val_loader():
    recorder = Recorder()
    trainer_for(vit(), DataLoader(data(n=16), batch_size=8), None, [recorder]).fit()
    assert not [c for c in recorder.calls if "validation" in c]
    assert recorder.calls.count("on_after_optimizer_step") == 2


class AddsAMetric(Callback):
    "Adds `val/score`, scripted per epoch, when validation ends."

    def __init__(self, scores):
        self.scores = scores

    def on_validation_end(self, state):
        state.metrics["val/score"] = self.scores[state.epoch]


def test_a_metric_added_at_validation_end_is_logged_saved_and_monitored(tmp_path):
    scores = [0.2, 0.9, 0.5, 0.4, 0.3]
    stopper = EarlyStoppingCallback(monitor="val/score", patience=2)
    trainer = trainer_for(
        vit(),
        DataLoader(data(), batch_size=16),
        DataLoader(data(seed=1), batch_size=16),
        [
            CheckpointCallback(tmp_path / "run", monitor="val/score"),
            CSVLogger(tmp_path / "metrics.csv"),
            stopper,
            AddsAMetric(scores),
        ],
        epochs=5,
    )
    result = trainer.fit()
    assert [h["val/score"] for h in result["history"]] == scores[:4]
    assert result["stopped_early"] and stopper.best_epoch == 2
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [float(r["val/score"]) for r in rows] == scores[:4]
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["epoch"] == 2 and best["metrics"]["val/score"] == 0.9


# --- validate


def test_validate_scores_another_model_on_another_loader():
    model, other = vit(), vit(classes=3, embed_dim=32)
    torch.manual_seed(5)
    other.head.weight.data.normal_()  # a model the trainer does not train
    val, elsewhere = data(seed=1), data(n=40, seed=2)
    trainer = trainer_for(model, DataLoader(data(), 16), DataLoader(val, 16))
    final = trainer.fit()["final"]
    # the defaults: the trainer's model on its val_loader, as fit reported it
    assert trainer.validate() == {
        k: v for k, v in final.items() if k in ("val/loss", "val/accuracy")
    }
    other.train()
    scores = trainer.validate(DataLoader(elsewhere, 16), model=other)
    assert not other.training and trainer.model is model and trainer.network is model
    images, labels = elsewhere.tensors
    with torch.no_grad():
        logits = other(images)
    assert scores["val/loss"] == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6
    )
    assert scores["val/accuracy"] == (logits.argmax(-1) == labels).sum().item() / len(
        labels
    )


def test_validate_without_a_loader_is_refused():
    trainer = trainer_for(vit(), DataLoader(data(), 16))
    with pytest.raises(ArgumentError, match=r"^loader=None; expected a data loader"):
        trainer.validate()


def test_validate_goes_through_the_override_points():
    class Shifted(Trainer):
        def forward(self, inputs):
            return self.network(inputs + 100.0)

    model, other = vit(), vit(embed_dim=32)
    val = DataLoader(data(seed=1), 16)
    trainer = Shifted(
        model, torch.optim.SGD(model.parameters(), lr=0.0), [], device="cpu"
    )
    images, labels = data(seed=1).tensors
    with torch.no_grad():
        other.eval()
        expected = F.cross_entropy(other(images + 100.0), labels).item()
    assert trainer.validate(val, model=other)["val/loss"] == pytest.approx(
        expected, rel=1e-6
    )


# --- top-5


@pytest.mark.parametrize("batch_size", [7, 64])
def test_top5_equals_a_direct_computation(batch_size):
    dataset = data(n=64, classes=10, seed=3)
    model = vit(classes=10)
    trainer = trainer_for(model, [], DataLoader(dataset, batch_size))
    scores = trainer.validate()
    images, labels = dataset.tensors
    with torch.no_grad():
        logits = model.eval()(images)
    top5 = (logits.topk(5).indices == labels[:, None]).any(-1).sum().item() / 64
    assert scores["val/top5"] == top5 and scores["val/accuracy"] <= top5 < 1
    assert trainer.count_top_k(logits, labels, k=1) == trainer.count_correct(
        logits, labels
    )
    # soft targets count their dominant class
    soft = F.one_hot(labels, 10).float() * 0.6 + 0.04
    assert trainer.count_top_k(logits, soft, 5) == trainer.count_top_k(
        logits, labels, 5
    )


@pytest.mark.parametrize("classes", [3, 5])
def test_no_top5_with_five_classes_or_fewer(classes):
    trainer = trainer_for(
        vit(classes=classes), [], DataLoader(data(classes=classes), 16)
    )
    assert set(trainer.validate()) == {"val/loss", "val/accuracy"}


def test_top5_in_the_csv_beside_accuracy(tmp_path):
    trainer = trainer_for(
        vit(classes=10),
        DataLoader(data(classes=10), 16),
        DataLoader(data(classes=10, seed=1), 16),
        [CSVLogger(tmp_path / "m.csv")],
    )
    trainer.fit()
    header = next(csv.reader((tmp_path / "m.csv").open()))
    assert header[:6] == [
        "epoch",
        "train/loss",
        "train/accuracy",
        "val/loss",
        "val/accuracy",
        "val/top5",
    ]


# --- soft targets


def test_target_classes():
    labels = torch.tensor([2, 0, 1])
    assert torch.equal(target_classes(labels), labels)
    mix = torch.tensor([[0.3, 0.7, 0.0], [0.5, 0.5, 0.0], [0.1, 0.2, 0.7]])
    assert target_classes(mix).tolist() == [1, 0, 2]  # a tie: the lower class
    assert target_classes(torch.zeros(2, 3, 4)) is None
    assert target_classes(torch.zeros(2, 3, dtype=torch.long)) is None


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_targets_loss_gradient_and_accuracy(smoothing):
    model, reference = vit(), vit()
    criterion = nn.CrossEntropyLoss(label_smoothing=smoothing)
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        [],
        criterion=criterion,
        device="cpu",
    )
    images = data(n=12).tensors[0]
    mix = torch.softmax(
        3 * torch.randn(12, 3, generator=torch.Generator().manual_seed(7)), -1
    )
    out = trainer.train_step((images, mix))
    logits = reference(images)
    loss = F.cross_entropy(logits, mix, label_smoothing=smoothing)
    (loss * 12).backward()  # the trainer's gradients are the batch's sum
    assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    assert out["count"] == 12
    agree = (logits.argmax(-1) == mix.argmax(-1)).sum()
    assert out["correct"] == agree
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)


def test_a_run_on_soft_targets_validated_on_labels():
    images, labels = data(n=32).tensors
    mix = (
        0.7 * F.one_hot(labels, 3).float() + 0.3 * F.one_hot(labels.roll(1), 3).float()
    )
    trainer = trainer_for(
        vit(),
        DataLoader(TensorDataset(images, mix), 8),
        DataLoader(TensorDataset(images, labels), 8),
        epochs=2,
    )
    final = trainer.fit()["final"]
    assert all(math.isfinite(v) for v in final.values())
    assert 0 <= final["train/accuracy"] <= 1 and 0 <= final["val/accuracy"] <= 1


# --- EMA


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, math.nan, True, "0.9", None])
def test_ema_refuses_a_decay_outside_0_1(decay):
    with pytest.raises(ArgumentError) as error:
        EMACallback(decay)
    assert str(error.value) == (
        f"decay={decay!r}; expected a finite number > 0 and < 1"
    )


@pytest.mark.parametrize("prefix", ["", "val/ema", 3])
def test_ema_refuses_a_prefix_that_is_not_a_metric_prefix(prefix):
    with pytest.raises(ArgumentError, match=r"^prefix=.*; expected a metric prefix"):
        EMACallback(0.9, prefix=prefix)


def small_cnn():
    "A model with buffers (batch norm) as well as weights."
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(144, 3),
    )


class Weights(Callback):
    "Copies the model's floating-point state after every optimiser step."

    def __init__(self):
        self.after_steps = []

    def on_after_optimizer_step(self, state):
        self.after_steps.append(
            {
                k: v.detach().clone()
                for k, v in state.trainer.model.state_dict().items()
                if v.is_floating_point()
            }
        )


def test_ema_equals_a_hand_computed_average_over_three_steps():
    decay, weights = 0.8, Weights()
    ema = EMACallback(decay)
    model = small_cnn()
    trainer_for(model, DataLoader(data(), 16), None, [ema, weights]).fit()
    first, *later = weights.after_steps
    assert len(later) == 2
    expected = dict(first)  # the average starts at the weights after the first step
    for step in later:
        expected = {k: decay * v + (1 - decay) * step[k] for k, v in expected.items()}
    average = ema.average.module.state_dict()
    for key, value in expected.items():  # weights and batch-norm statistics alike
        torch.testing.assert_close(average[key], value, rtol=0, atol=1e-6)
    assert not torch.equal(average["4.weight"], model.state_dict()["4.weight"])
    assert ema.average.n_averaged.item() == 3


def test_ema_with_a_tiny_decay_scores_what_the_model_scores():
    ema = EMACallback(1e-9)  # 1 - 1e-9 is 1 in float32: the average is the last weights
    history = trainer_for(
        vit(classes=10),
        DataLoader(data(classes=10), 16),
        DataLoader(data(classes=10, seed=1), 16),
        [ema],
        epochs=2,
    ).fit()["history"]
    for epoch in history:
        for metric in ("loss", "accuracy", "top5"):
            assert epoch[f"val_ema/{metric}"] == epoch[f"val/{metric}"]


def test_ema_metrics_and_checkpoint(tmp_path):
    ema = EMACallback(0.9)
    model = vit(classes=10)
    trainer = trainer_for(
        model,
        DataLoader(data(classes=10), 16),
        DataLoader(data(classes=10, seed=1), 16),
        [
            ema,
            CheckpointCallback(tmp_path, monitor="val_ema/accuracy"),
            CSVLogger(tmp_path / "metrics.csv"),
        ],
        epochs=2,
    )
    history = trainer.fit()["history"]
    for epoch in history:
        values = [epoch[f"val_ema/{m}"] for m in ("loss", "accuracy", "top5")]
        assert all(math.isfinite(v) for v in values) and values[1] <= values[2]
    # the average is validated like the model: the same figures from validate()
    scores = trainer.validate(model=ema.average.module)
    assert scores == {
        k.replace("val_ema", "val"): v
        for k, v in history[-1].items()
        if k.startswith("val_ema/")
    }
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    average = raw["callbacks"]["EMACallback:0"]["average"]
    assert set(average) == {"n_averaged"} | {f"module.{k}" for k in model.state_dict()}
    assert all(torch.equal(average[k], v) for k, v in ema.average.state_dict().items())
    assert (
        load_checkpoint(tmp_path / "last.pt")["metrics"]["val_ema/loss"]
        == history[-1]["val_ema/loss"]
    )
    assert ema.average.module.head.weight.device == trainer.device
    header = next(csv.reader((tmp_path / "metrics.csv").open()))
    assert {"val_ema/loss", "val_ema/accuracy", "val_ema/top5"} <= set(header)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["metrics"]["val_ema/accuracy"] == max(
        h["val_ema/accuracy"] for h in history
    )


class Interrupt(Callback):
    def on_epoch_end(self, state):
        state.should_stop = state.epoch + 1 == 2


def noisy_run(callbacks, resume_from=None):
    "4 epochs of a ViT with dropout and stochastic depth; the val loader has no generator."
    model = vit(classes=10, dropout=0.1, drop_path=0.2)
    trainer = trainer_for(
        model,
        shuffled(data(classes=10)),
        DataLoader(data(classes=10, seed=1), 16),
        callbacks,
        epochs=4,
        seed=0,
    )
    trainer.fit(resume_from=resume_from)
    return trainer


def without_seconds(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_a_resumed_run_continues_the_same_average_bit_for_bit(tmp_path):
    straight = EMACallback(0.9)
    whole = noisy_run([straight])
    noisy_run([EMACallback(0.9), CheckpointCallback(tmp_path), Interrupt()])
    resumed = EMACallback(0.9)
    after = noisy_run([resumed], resume_from=tmp_path / "last.pt")
    a, b = straight.average.state_dict(), resumed.average.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert without_seconds(after.state.history) == without_seconds(whole.state.history)
    assert "val_ema/accuracy" in after.state.history[-1]


def test_the_average_changes_nothing_else_in_the_run():
    plain, averaged = noisy_run([]), noisy_run([EMACallback(0.9)])
    for a, b in zip(plain.model.parameters(), averaged.model.parameters()):
        assert torch.equal(a, b)
    strip = [
        {k: v for k, v in h.items() if not k.startswith("val_ema/")}
        for h in without_seconds(averaged.state.history)
    ]
    assert strip == without_seconds(plain.state.history)


def test_ema_under_bfloat16_autocast_keeps_float32_weights():
    ema = EMACallback(0.9)
    trainer_for(
        vit(classes=10),
        DataLoader(data(classes=10), 16),
        DataLoader(data(classes=10, seed=1), 16),
        [ema],
        use_amp=True,
        amp_dtype="bfloat16",
    ).fit()
    assert all(p.dtype == torch.float32 for p in ema.average.module.parameters())
    assert ema.average.n_averaged.item() == 3
