"""Callbacks: checkpoints (atomic, weights_only, best by the monitored metric), early
stopping, the CSV log, the console and Weights & Biases."""

import csv
import io
import math
import sys
import types

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from neural_stack.models import VisionTransformer
from neural_stack.training.callbacks import (
    CSV_COLUMNS,
    CheckpointCallback,
    CSVLogger,
    EarlyStoppingCallback,
    Monitor,
    PrintCallback,
    TensorBoardLogger,
    format_duration,
    ProgressCallback,
    WandbCallback,
)
from neural_stack.training.trainer import Callback, Trainer


def make_trainer(callbacks, epochs=3, lr=1e-2, n=64, run_config=None):
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=8,
        patch_size=2,
        in_channels=1,
        num_classes=3,
        embed_dim=16,
        num_heads=2,
        num_layers=1,
    )
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(
        torch.randn(n, 1, 8, 8, generator=g), torch.randint(3, (n,), generator=g)
    )
    return Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=lr),
        DataLoader(ds, batch_size=16),
        DataLoader(ds, batch_size=32),
        callbacks=callbacks,
        device="cpu",
        num_epochs=epochs,
        run_config=run_config,
    )


class Scripted(Callback):
    "Sets each epoch's val/accuracy to a scripted value, before the tested callbacks."

    order = -1

    def __init__(self, values):
        self.values = values

    def on_epoch_end(self, state):
        state.metrics["val/accuracy"] = self.values[state.epoch]


def test_monitor():
    assert Monitor("val/loss").mode == "min" and Monitor("val/accuracy").mode == "max"
    m = Monitor("val/accuracy", min_delta=0.05)
    assert [
        m.improved({"val/accuracy": v}) for v in (0.5, 0.52, 0.6, math.nan, 0.7)
    ] == [True, False, True, False, True]
    with pytest.raises(
        KeyError,
        match=r"monitor='val/accuracy' is not among this run's metrics \(train/loss\)",
    ):
        Monitor("val/accuracy").improved({"train/loss": 1.0})
    with pytest.raises(ValueError, match=r"mode='up'; expected one of 'min', 'max'"):
        Monitor("val/loss", mode="up")


def test_checkpoints_best_last_and_every(tmp_path):
    values = [0.5, 0.7, 0.6, 0.7, math.nan]
    trainer = make_trainer(
        [CheckpointCallback(tmp_path, save_every=2), Scripted(values)], epochs=5
    )
    trainer.fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt",
        "epoch_002.pt",
        "epoch_004.pt",
        "last.pt",
    ]
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (
        best["epoch"] == 2 and best["metrics"]["val/accuracy"] == 0.7
    )  # a tie or a NaN is no improvement
    assert (
        last["epoch"] == 5
        and torch.load(tmp_path / "epoch_004.pt", weights_only=True)["epoch"] == 4
    )
    assert {
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "step",
        "config",
        "metrics",
        "callbacks",
    } <= set(best)
    model = make_trainer([]).model
    model.load_state_dict(last["model"])
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            model.state_dict().values(), trainer.model.state_dict().values()
        )
    )


def test_checkpoint_runs_last_and_holds_every_callbacks_state(tmp_path):
    stopper = EarlyStoppingCallback(patience=10)
    make_trainer(
        [CheckpointCallback(tmp_path), stopper, Scripted([0.5, 0.4, 0.3])]
    ).fit()
    states = torch.load(tmp_path / "last.pt", weights_only=True)["callbacks"]
    assert states["EarlyStoppingCallback:0"] == {
        "best": 0.5,
        "wait": 2,
        "best_epoch": 1,
    }
    assert (
        states["CheckpointCallback:0"] == {"best": 0.5} and states["Scripted:0"] == {}
    )


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    make_trainer([CheckpointCallback(tmp_path)], epochs=1).fit()
    before = (tmp_path / "last.pt").read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        make_trainer([CheckpointCallback(tmp_path)], epochs=1).fit()
    assert (tmp_path / "last.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_checkpoint_config_is_a_plain_dict(tmp_path):
    from neural_stack.training.config import TrainConfig, config_to_dict

    run_config = config_to_dict(TrainConfig())
    make_trainer([CheckpointCallback(tmp_path)], epochs=1, run_config=run_config).fit()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["config"] == run_config


def test_early_stopping_and_restoring_the_best_weights():
    weights = {}

    class Snapshot(Callback):
        order = -1

        def on_epoch_end(self, state):
            weights[state.epoch + 1] = {
                k: v.clone() for k, v in state.trainer.model.state_dict().items()
            }

    stopper = EarlyStoppingCallback(patience=2, restore_best_weights=True)
    trainer = make_trainer(
        [stopper, Snapshot(), Scripted([0.5, 0.8, 0.7, 0.79, 0.9, 0.95])], epochs=6
    )
    result = trainer.fit()
    assert (
        len(result["history"]) == 4
        and result["stopped_early"]
        and stopper.best_epoch == 2
    )
    assert all(
        torch.equal(v, weights[2][k]) for k, v in trainer.model.state_dict().items()
    )


def test_csv_logger(tmp_path):
    path = tmp_path / "logs" / "metrics.csv"
    make_trainer([CSVLogger(path)], epochs=3).fit()
    rows = list(csv.DictReader(path.open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    # three classes: no top-5 column (tests/test_trainer_hooks.py has one)
    expected = [c for c in CSV_COLUMNS if c != "val/top5"]
    assert list(rows[0])[: len(expected)] == expected
    make_trainer([CSVLogger(path)], epochs=2).fit()  # a new run starts a new file
    assert len(list(csv.DictReader(path.open()))) == 2


def test_print_and_progress():
    lines, bars = io.StringIO(), io.StringIO()
    make_trainer(
        [PrintCallback(file=lines), ProgressCallback(log_every=1, file=bars)], epochs=2
    ).fit()
    header, *rows = lines.getvalue().splitlines()
    assert header.split() == [
        "epoch", "train", "loss", "train", "acc", "val", "loss", "val", "acc",
        "lr", "time", "eta",
    ]  # fmt: skip
    assert [row.split()[0] for row in rows] == ["1/2", "2/2"]
    # the first row has a time left, the last none; every number under its label
    assert rows[0].endswith(" s") and len(rows[0]) == len(header)
    assert len(rows[1].split()) == len(rows[0].split()) - 2
    assert "epoch 2/2" in bars.getvalue() and "loss=" in bars.getvalue()
    assert "run_eta=" in bars.getvalue()


def test_tensorboard_logger_writes_scalars_and_purges_on_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    first = make_trainer([TensorBoardLogger(tmp_path)], epochs=3)
    first.fit()
    events = EventAccumulator(str(tmp_path)).Reload()
    assert [e.step for e in events.Scalars("val/accuracy")] == [1, 2, 3]
    # a run resumed after epoch 1 trains epochs 2 and 3 again: their old events go
    checkpoint = first.state_dict()
    checkpoint["epoch"] = 1
    again = make_trainer([TensorBoardLogger(tmp_path)], epochs=3)
    again.load_state_dict(checkpoint)
    again.fit()
    events = EventAccumulator(str(tmp_path)).Reload()
    assert [e.step for e in events.Scalars("val/accuracy")] == [1, 2, 3]
    # the resumed writer marks step 2 as restarted, which tells readers to drop the
    # earlier events from step 2 on (TensorBoard's purge_step)
    restarts = [
        event.step
        for path in sorted(tmp_path.glob("events.out.tfevents.*"))
        for event in EventFileLoader(str(path)).Load()
        if event.HasField("session_log") and event.session_log.status == 1  # START
    ]
    assert restarts == [2], restarts


def test_tensorboard_is_optional_with_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'neural-stack\[tensorboard\]'"):
        TensorBoardLogger("unused")


@pytest.mark.parametrize(
    "seconds, shown",
    [(0.04, "0.0 s"), (9.9, "9.9 s"), (42.4, "42 s"), (185, "3 min 05 s"),
     (7620, "2 h 07 min"), (math.nan, "?")],
)  # fmt: skip
def test_format_duration(seconds, shown):
    assert format_duration(seconds) == shown


def test_wandb_is_optional_with_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(
        ImportError,
        match=r"WandbCallback needs wandb: pip install 'neural-stack\[wandb\]'",
    ):
        WandbCallback()


def test_wandb_logs_every_epoch(monkeypatch):
    calls = []

    class Run:
        def log(self, metrics, step):
            calls.append(("log", step, sorted(metrics)))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(
        init=lambda **kwargs: calls.append(("init", kwargs)) or Run()
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    from neural_stack.training.config import TrainConfig, config_to_dict

    make_trainer(
        [WandbCallback(project="p", name="run")],
        epochs=2,
        run_config=config_to_dict(TrainConfig()),
    ).fit()
    assert (
        calls[0][0] == "init"
        and calls[0][1]["project"] == "p"
        and calls[0][1]["name"] == "run"
    )
    assert calls[0][1]["config"]["model"]["embed_dim"] == 64
    assert [c[1] for c in calls if c[0] == "log"] == [1, 2] and calls[-1] == ("finish",)
