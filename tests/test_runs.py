"""Runs you can trust: exact resume, crash safety (a real SIGKILL), non-finite
losses, and distributed training with a real two-process torchrun on the CPU."""

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from neural_stack.training import (
    CheckpointCallback,
    ConfigError,
    CSVLogger,
    EarlyStoppingCallback,
    Callback,
    Trainer,
    apply_overrides,
    build_dataloaders,
    build_from_config,
    TrainConfig,
)
from neural_stack.training.run import build_trainer
from neural_stack.training.config import config_to_dict
from neural_stack.training.run import resume_conflicts, train
from neural_stack.training.trainer import (
    CheckpointError,
    NonFiniteLossError,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# a run with every source of randomness: dropout, stochastic depth, augmentation,
# a warm-up
RANDOM_RUN = [
    "num_epochs=4",
    "model.dropout=0.1",
    "model.drop_path=0.2",
    "model.num_layers=2",
    "data.random_crop=true",
    "data.random_horizontal_flip=true",
    "data.batch_size=100",
    "scheduler.name=cosine_warmup",
    "scheduler.warmup_epochs=1",
    "grad_clip_norm=1.0",
]


class StopAfter(Callback):
    "Ends a run after `epochs` epochs, as an interruption would."

    def __init__(self, epochs):
        self.epochs = epochs

    def on_epoch_end(self, state):
        state.should_stop = state.should_stop or state.epoch + 1 == self.epochs


def no_seconds(history):
    return [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in history]


def test_four_epochs_equal_two_plus_a_resumed_two_bit_for_bit(tmp_path):
    config = apply_overrides(TrainConfig(), RANDOM_RUN)
    straight = build_trainer(config, [])
    straight_history = straight.fit()["history"]

    first = build_trainer(
        config,
        [
            CheckpointCallback(tmp_path),
            EarlyStoppingCallback(patience=10),
            CSVLogger(tmp_path / "metrics.csv"),
            StopAfter(2),
        ],
    )
    assert len(first.fit()["history"]) == 2
    resumed = build_trainer(
        config,
        [
            CheckpointCallback(tmp_path),
            EarlyStoppingCallback(patience=10),
            CSVLogger(tmp_path / "metrics.csv"),
        ],
    )
    history = resumed.fit(resume_from=tmp_path / "last.pt")["history"]

    assert all(
        torch.equal(a, b)
        for a, b in zip(
            straight.model.state_dict().values(), resumed.model.state_dict().values()
        )
    )
    assert no_seconds(history) == no_seconds(straight_history)
    assert resumed.state.step == straight.state.step
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]


def test_resuming_with_another_model_fails_clearly(tmp_path):
    config = apply_overrides(TrainConfig(), ["num_epochs=1"])
    build_trainer(config, [CheckpointCallback(tmp_path)]).fit()
    other = apply_overrides(
        config, ["model.embed_dim=96", f"checkpoint_dir={tmp_path / 'other'}"]
    )
    # the run layer compares the configurations before it builds or writes anything
    with pytest.raises(
        ConfigError,
        match=r"last.pt: it was written by a run with another configuration, and "
        r"resuming continues that same run: model.embed_dim: 64 there, 96 here$",
    ):
        train(other, resume_from=tmp_path / "last.pt")
    assert not (tmp_path / "other").exists()
    # the trainer, which knows no configuration, finds the weights do not fit
    with pytest.raises(
        CheckpointError, match=r"last.pt does not fit this run: .*cls_token"
    ):
        build_trainer(other, []).fit(resume_from=tmp_path / "last.pt")


def test_resume_allows_only_changes_that_keep_the_run_the_same():
    saved = config_to_dict(TrainConfig())
    where = [
        "device=cpu",
        "checkpoint_dir=elsewhere",
        "log_every=7",
        "data.num_workers=2",
    ]
    now = config_to_dict(apply_overrides(TrainConfig(), where))
    assert resume_conflicts(saved, now) == []
    now = config_to_dict(
        apply_overrides(TrainConfig(), ["optimizer.lr=1e-2", "num_epochs=20", "seed=3"])
    )
    assert resume_conflicts(saved, now) == [
        "num_epochs: 10 there, 20 here",
        "optimizer.lr: 0.001 there, 0.01 here",
        "seed: 0 there, 3 here",
    ]
    # without a schedule, the length of the run is free to change
    constant = apply_overrides(TrainConfig(), ["scheduler.name=none"])
    longer = apply_overrides(constant, ["num_epochs=20"])
    assert resume_conflicts(config_to_dict(constant), config_to_dict(longer)) == []


def test_a_refused_resume_changes_no_file(tmp_path):
    args = [
        "train",
        "configs/vit_digits.yaml",
        "num_epochs=2",
        "scheduler.warmup_epochs=1",
        f"checkpoint_dir={tmp_path}",
    ]
    assert neural_stack(*args).returncode == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    refused = neural_stack(
        *args, "optimizer.lr=0.5", "--resume", str(tmp_path / "last.pt")
    )
    assert refused.returncode == 2
    assert "optimizer.lr: 0.002 there, 0.5 here" in refused.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_csv_rows_of_epochs_trained_again_are_dropped(tmp_path):
    config = apply_overrides(TrainConfig(), ["num_epochs=3"])
    build_trainer(
        config, [CheckpointCallback(tmp_path), CSVLogger(tmp_path / "metrics.csv")]
    ).fit()
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    checkpoint["epoch"], checkpoint["history"] = 2, checkpoint["history"][:2]
    # as if killed after epoch 3's row, before its checkpoint
    save_checkpoint(checkpoint, tmp_path / "resume.pt")
    build_trainer(config, [CSVLogger(tmp_path / "metrics.csv")]).fit(
        resume_from=tmp_path / "resume.pt"
    )
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]


class NaNAt(nn.Module):
    "Wraps a model; from the `at`-th training forward on, its outputs are NaN."

    def __init__(self, model, at):
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def forward(self, x):
        self.calls += self.training
        out = self.model(x)
        return out * math.nan if self.training and self.calls >= self.at else out


@pytest.mark.parametrize("log_every", [1, 4])
def test_a_nan_loss_stops_the_run_at_its_step_and_leaves_checkpoints_alone(
    tmp_path, log_every
):
    config = apply_overrides(TrainConfig(), ["num_epochs=3"])
    parts = build_from_config(config)
    train_loader, val_loader = build_dataloaders(config.data, seed=0)
    model = NaNAt(parts["model"], at=len(train_loader) + 3)  # batch 3 of epoch 2
    run = Trainer(
        model,
        parts["optimizer"],
        train_loader,
        val_loader,
        device="cpu",
        num_epochs=3,
        log_every=log_every,
        callbacks=[CheckpointCallback(tmp_path)],
    )
    with pytest.raises(
        NonFiniteLossError,
        match=r"became nan at epoch 2, batch 3 \(after 26 optimizer "
        r"steps\); the run stopped.*learning rate too high",
    ):
        run.fit()
    checkpoint = torch.load(tmp_path / "best.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in checkpoint["model"].values()
    )
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1


def neural_stack(*args, **kwargs):
    return subprocess.run(
        [str(BIN / "neural-stack"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        **kwargs,
    )


def test_the_command_line_stops_on_a_nan_with_a_non_zero_exit(tmp_path):
    done = neural_stack(
        "train",
        "configs/vit_digits.yaml",
        "optimizer.lr=1e30",
        "grad_clip_norm=null",
        "scheduler.name=none",
        "num_epochs=2",
        "log_every=1",
        f"checkpoint_dir={tmp_path}",
    )
    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("neural-stack: stopped: the training loss became ")
        and "Traceback" not in done.stderr
    )
    assert last.split("became ")[1].split()[0] in ("nan", "inf", "-inf")
    assert not (tmp_path / "best.pt").exists()


def test_a_sigkilled_run_leaves_loadable_checkpoints_and_resumes(tmp_path):
    args = [
        "train",
        "configs/vit_digits.yaml",
        "num_epochs=12",
        "scheduler.warmup_epochs=1",
        f"checkpoint_dir={tmp_path}",
    ]
    # let a first epoch finish, then kill at arbitrary moments
    for kill_after in (2.5, 1.3, 0.7):
        process = subprocess.Popen(
            [
                str(BIN / "neural-stack"),
                *args,
                *(
                    ["--resume", str(tmp_path / "last.pt")]
                    if (tmp_path / "last.pt").exists()
                    else []
                ),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not (tmp_path / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
        process.wait()
        state = torch.load(
            tmp_path / "last.pt", weights_only=True
        )  # never a partial file
        assert state["epoch"] >= 1 and set(state["model"]) == set(
            torch.load(tmp_path / "best.pt", weights_only=True)["model"]
        )
    (tmp_path / ".last.pt.planted.tmp").write_bytes(b"left by a killed writer")
    done = neural_stack(*args, "--resume", str(tmp_path / "last.pt"))
    assert done.returncode == 0, done.stderr
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 12
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == [
        "best.pt",
        "config.yaml",
        "last.pt",
        "metrics.csv",
    ]
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 13))
    # and it ends exactly where the same run without the kills ends
    straight = tmp_path / "straight"
    args[-1] = f"checkpoint_dir={straight}"
    assert neural_stack(*args).returncode == 0
    killed, clean = (
        torch.load(d / "last.pt", weights_only=True)["model"]
        for d in (tmp_path, straight)
    )
    assert all(torch.equal(killed[k], clean[k]) for k in clean)


def torchrun(*args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            str(BIN / "torchrun"),
            "--standalone",  # a free port: other tests may run beside it
            f"--nproc_per_node={nproc}",
            "-m",
            "neural_stack.cli",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env=env,
    )


def test_torchrun_with_two_cpu_processes_trains_writes_once_and_resumes(tmp_path):
    args = [
        "train",
        "configs/vit_digits.yaml",
        "scheduler.warmup_epochs=1",
        f"checkpoint_dir={tmp_path}",
    ]
    done = torchrun(*args, "num_epochs=2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        done.stdout.count("done after 2 epochs") == 1
        and "in 2 processes" in done.stdout
    )
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == [
        "best.pt",
        "config.yaml",
        "last.pt",
        "metrics.csv",
    ]
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    assert len(checkpoint["rng"]) == 2 and checkpoint["step"] == 2 * math.ceil(750 / 64)
    assert not any(key.startswith("module.") for key in checkpoint["model"])
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[-1]["val/accuracy"]) * 297 == pytest.approx(
        round(float(rows[-1]["val/accuracy"]) * 297)
    )


def test_every_torchrun_process_resumes(tmp_path):
    args = [
        "train",
        "configs/vit_digits.yaml",
        "scheduler.name=none",
        f"checkpoint_dir={tmp_path}",
    ]
    assert torchrun(*args, "num_epochs=1").returncode == 0
    done = torchrun(*args, "num_epochs=2", "--resume", str(tmp_path / "last.pt"))
    assert done.returncode == 0, done.stderr[-2000:]
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == 2 * math.ceil(750 / 64)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
