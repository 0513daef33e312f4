"""The run layer and the command around it: everything is checked before anything is
written, run folders are never silently replaced, and every failure is one line with
its exit status."""

import csv
import errno
import hashlib
import math
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from neural_stack.cli import main
from neural_stack.models import VisionTransformer
from neural_stack.training import (
    CheckpointCallback,
    TrainConfig,
    apply_overrides,
    build_model,
    factory,
    load_config,
    save_config,
)
from neural_stack.training.config import config_to_dict
from neural_stack.training.data import build_dataloaders
from neural_stack.training.run import (
    dry_run,
    evaluate,
    resume_conflicts,
    run_files,
    train,
)
from neural_stack.training.trainer import (
    Callback,
    CheckpointError,
    NonFiniteLossError,
    Trainer,
    load_checkpoint,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = shutil.which("neural-stack", path=str(Path(sys.executable).parent))
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def digests(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_files(folder)
    }


def one_line(status, stderr, expected_status=2):
    lines = stderr.strip().splitlines()
    assert status == expected_status, (status, stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def command(*args, **kwargs):
    "`neural-stack ARGS` in a fresh process, on one thread."
    return subprocess.run(
        [SCRIPT, *args],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
        timeout=600,
        **kwargs,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    "A finished one-epoch run of the digits, its configuration file and its folder."
    root = tmp_path_factory.mktemp("finished")
    config = apply_overrides(
        TrainConfig(), ["num_epochs=1", f"checkpoint_dir={root / 'run'}"]
    )
    path = save_config(config, root / "digits.yaml")
    train(config, progress=False)
    return path, root / "run"


# the command line


def test_help_and_version_answer_without_torch():
    probe = (
        "import sys\n"
        "from neural_stack.cli import main\n"
        "for argv in (['--version'], ['--help'], ['train', '--help'],\n"
        "             ['eval', '--help'], ['list', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("neural-stack 0.") and out.endswith("False\n"), out
    for section in ("model.*", "data.*", "optimizer.*", "scheduler.*", "num_epochs"):
        assert section in out
    for option in ("--confusion FILE.html", "--batch-size N", "--max-parameters N"):
        assert option in out
    assert "{models,datasets}" in out and "eval" in out


def test_print_config_prints_the_run_as_it_would_run(tmp_path, capsys):
    path = save_config(TrainConfig(), tmp_path / "c.yaml")
    os.chdir(tmp_path)
    assert main(["train", str(path), "optimizer.lr=3e-4", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["optimizer"]["lr"] == 3e-4
    (tmp_path / "printed.yaml").write_text(printed)
    assert load_config(tmp_path / "printed.yaml") == apply_overrides(
        TrainConfig(), ["optimizer.lr=3e-4"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "printed.yaml"]


def test_dry_run_builds_trains_one_batch_and_writes_nothing(tmp_path, capsys):
    config = apply_overrides(TrainConfig(), [f"checkpoint_dir={tmp_path / 'run'}"])
    report = dry_run(config)
    model = build_model(config.model)
    assert report["parameters"] == sum(p.numel() for p in model.parameters())
    assert report["batch"] == (64, 1, 8, 8) and math.isfinite(report["loss"])
    path = save_config(config, tmp_path / "c.yaml")
    assert main(["train", str(path), "--dry-run"]) == 0
    assert "dry run:" in capsys.readouterr().out and not (tmp_path / "run").exists()


def test_dry_run_leaves_no_worker_processes_behind(tmp_path):
    config = apply_overrides(
        TrainConfig(), ["data.num_workers=1", f"checkpoint_dir={tmp_path / 'run'}"]
    )
    reports = [dry_run(config) for _ in range(3)]
    assert multiprocessing.active_children() == []
    assert reports[0] == reports[2] and not (tmp_path / "run").exists()


def test_max_parameters_limits_the_model_a_command_builds(tmp_path, capsys):
    path = save_config(TrainConfig(), tmp_path / "c.yaml")
    args = ["train", str(path), f"checkpoint_dir={tmp_path / 'run'}", "--dry-run"]
    line = one_line(main([*args, "--max-parameters", "1000"]), capsys.readouterr().err)
    assert "model: 202,186 parameters, more than MAX_PARAMETERS=1,000" in line, line
    assert factory.MAX_PARAMETERS == 1_000_000_000  # the limit held only for the run
    assert main([*args, "--max-parameters", "202186"]) == 0
    assert "dry run: 202,186 parameters" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main([*args, "--max-parameters", "0"])
    assert refused.value.code == 2
    assert "expected an integer of at least 1" in capsys.readouterr().err


def test_nothing_is_announced_before_the_checks_pass(tmp_path, capsys):
    path = save_config(TrainConfig(), tmp_path / "c.yaml")
    assert main(["train", str(path), "device=cuda:99"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "cuda:99" in one_line(2, err)


def test_readme_example_and_the_command_write_the_same_metrics(tmp_path):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    (example,) = [
        b for b in blocks if "from neural_stack.training.run import train" in b
    ]
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    by_python = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        env=ONE_THREAD,
        capture_output=True,
    )
    assert by_python.returncode == 0, by_python.stderr
    overrides = re.search(r"apply_overrides\(config, \[(.*?)\]\)", example).group(1)
    overrides = [o.strip().strip('"') for o in overrides.split(",")]
    done = command(
        "train",
        "configs/vit_digits.yaml",
        *overrides,
        "checkpoint_dir=cli",
        "--no-progress",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    python_dir = tmp_path / load_config(ROOT / "configs/vit_digits.yaml").checkpoint_dir
    a, b = (
        pd.read_csv(d / "metrics.csv").drop(columns="seconds")
        for d in (python_dir, tmp_path / "cli")
    )
    assert len(a) == 4 and a.equals(b)


# checkpoints


def flip_a_weight_byte(source, target):
    "Copy checkpoint `source` to `target` with one byte flipped in its largest tensor."
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as z:
        entry = max(
            (i for i in z.infolist() if "/data/" in i.filename),
            key=lambda i: i.file_size,
        )
    header = entry.header_offset
    name_len = int.from_bytes(data[header + 26 : header + 28], "little")
    extra_len = int.from_bytes(data[header + 28 : header + 30], "little")
    start = header + 30 + name_len + extra_len
    data[start + entry.file_size // 2] ^= 0x01
    target.write_bytes(bytes(data))


def test_a_flipped_byte_is_caught_and_named(finished, tmp_path):
    flip_a_weight_byte(finished[1] / "last.pt", tmp_path / "flipped.pt")
    with pytest.raises(
        CheckpointError, match=r"flipped.pt: damaged: its contents do not match"
    ):
        load_checkpoint(tmp_path / "flipped.pt")
    assert load_checkpoint(finished[1] / "last.pt")["epoch"] == 1


@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda good, bad: bad.write_bytes(good.read_bytes()[:4000]),
            "not a readable checkpoint",
        ),
        (lambda good, bad: bad.write_bytes(b""), "not a readable checkpoint"),
        (lambda good, bad: bad.write_text("epoch: 3\n"), "not a readable checkpoint"),
        (
            lambda good, bad: torch.save(load_checkpoint(good)["model"], bad),
            "not a training checkpoint .*model.load_state_dict",
        ),
        (flip_a_weight_byte, "damaged"),
        (lambda good, bad: None, "no such file"),
    ],
    ids=["truncated", "empty", "text", "bare state_dict", "flipped byte", "missing"],
)
def test_bad_checkpoints_to_resume_are_one_line_and_exit_2(
    finished, tmp_path, capsys, make, match
):
    path, folder = finished
    bad = tmp_path / "bad.pt"
    make(folder / "last.pt", bad)
    out = tmp_path / "new"
    status = main(["train", str(path), f"checkpoint_dir={out}", "--resume", str(bad)])
    line = one_line(status, capsys.readouterr().err)
    assert str(bad) in line and re.search(match, line), line
    assert not out.exists()


def test_resuming_another_models_checkpoint_is_refused(finished, tmp_path, capsys):
    path, folder = finished
    status = main(
        [
            "train",
            str(path),
            "model.embed_dim=96",
            f"checkpoint_dir={tmp_path / 'new'}",
            "--resume",
            str(folder / "last.pt"),
        ]
    )
    assert "model.embed_dim: 64 there, 96 here" in one_line(
        status, capsys.readouterr().err
    )


class PoisonLastStep(Callback):
    "Makes one weight NaN after the last batch of epoch 2, which no training loss sees."

    def on_batch_end(self, state):
        if state.epoch == 1 and state.batch == len(state.trainer.train_loader) - 1:
            with torch.no_grad():
                state.trainer.model.head.weight[0, 0] = math.nan


def test_a_nan_weight_in_the_last_step_is_never_saved(tmp_path):
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=8,
        patch_size=4,
        in_channels=1,
        num_classes=3,
        embed_dim=16,
        num_heads=2,
        num_layers=1,
    )
    data = TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(3, (64,)))
    trainer = Trainer(
        model,
        torch.optim.AdamW(model.parameters()),
        DataLoader(data, batch_size=16),
        DataLoader(data, batch_size=32),
        callbacks=[CheckpointCallback(tmp_path), PoisonLastStep()],
        device="cpu",
        num_epochs=3,
    )
    with pytest.raises(
        NonFiniteLossError, match=r"epoch 2 ended with non-finite .*epoch 1"
    ):
        trainer.fit()
    for name in ("last.pt", "best.pt"):
        saved = load_checkpoint(tmp_path / name)
        assert saved["epoch"] == 1
        assert all(t.isfinite().all() for t in saved["model"].values())


# configuration files


# a YAML alias bomb under a known field: 9**9 zeros in 500 bytes
LAYERS = ["&a [" + ", ".join("0" * 9) + "]"] + [
    f"&{c} [" + ", ".join([f"*{b}"] * 9) + "]" for b, c in zip("abcdefgh", "bcdefghi")
]
ALIAS_BOMB = f"model:\n  embed_dim: [{', '.join(LAYERS)}]\n"


@pytest.mark.parametrize(
    "text,match",
    [
        ("num_epochs: 3\nmodel: [1, 2\n", r"c.yaml:\d+:\d+: "),
        ("", r"c.yaml: empty; write \{\} in it to train the defaults"),
        ("- 1\n- 2\n", r"c.yaml=\[1, 2\]; expected a mapping"),
        ("num_epochs: 3\nnum_epochs: 4\n", r"c.yaml:2:1: duplicate key 'num_epochs'"),
        (b"experiment_name: caf\xe9\n", r"c.yaml: not UTF-8 text"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", r"c.yaml: nested too deeply"),
        (
            "seed: 18446744073709551616\n",
            r"seed=18446744073709551616; expected an integer",
        ),
        (ALIAS_BOMB, r"model.embed_dim=\[\[0, 0, .*\.\.\.; expected an integer"),
    ],
    ids=[
        "syntax",
        "empty",
        "list",
        "duplicate",
        "latin-1",
        "deep",
        "seed 2**64",
        "alias bomb",
    ],
)
def test_config_file_problems_are_one_short_line_and_exit_2(
    tmp_path, capsys, text, match
):
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = one_line(main(["train", str(path)]), capsys.readouterr().err)
    assert re.search(match, line) and len(line) < 400, line
    assert "tag" not in line.lower() and sorted(p.name for p in tmp_path.iterdir()) == [
        "c.yaml"
    ]


# run folders


def test_a_folder_that_holds_a_run_is_refused_unchanged(finished, capsys):
    path, folder = finished
    before = digests(folder)
    line = one_line(main(["train", str(path)]), capsys.readouterr().err)
    assert (
        "holds a run already" in line and "--resume" in line and "--overwrite" in line
    )
    line = one_line(
        main(["train", str(folder / "config.yaml")]), capsys.readouterr().err
    )
    assert "would overwrite the configuration being run" in line
    assert digests(folder) == before


def test_overwrite_replaces_the_run(tmp_path, capsys):
    config = apply_overrides(
        TrainConfig(), ["num_epochs=2", f"checkpoint_dir={tmp_path / 'run'}"]
    )
    path = save_config(config, tmp_path / "c.yaml")
    train(config, progress=False)
    (tmp_path / "run" / "epoch_007.pt").write_bytes(b"from an older run")
    assert (
        main(["train", str(path), "num_epochs=1", "--overwrite", "--no-progress"]) == 0
    )
    assert [p.name for p in run_files(tmp_path / "run")] == [
        "best.pt",
        "config.yaml",
        "last.pt",
        "metrics.csv",
    ]
    assert len(pd.read_csv(tmp_path / "run" / "metrics.csv")) == 1


def start_run(tmp_path, epochs, **pipes):
    """`neural-stack train` of the digits for `epochs` into tmp_path/run, started in
    the background on one thread; the process and its configuration file."""
    config = apply_overrides(
        TrainConfig(), [f"num_epochs={epochs}", f"checkpoint_dir={tmp_path / 'run'}"]
    )
    path = save_config(config, tmp_path / "c.yaml")
    pipes = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **pipes}
    command = [SCRIPT, "train", str(path), "--no-progress"]
    return subprocess.Popen(command, text=True, env=ONE_THREAD, **pipes), path


def test_a_second_run_in_a_folder_in_use_is_refused_and_a_killed_one_leaves_no_lock(
    tmp_path,
):
    first, path = start_run(tmp_path, 50, stdout=subprocess.PIPE)
    try:
        assert (
            "training vit on digits, 50 epochs" in first.stdout.readline()
        )  # it holds the lock
        before = digests(tmp_path / "run")
        second = command("train", str(path), "--overwrite")
        line = one_line(second.returncode, second.stderr)
        assert f"is in use by another run (process {first.pid})" in line
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()  # SIGKILL: no chance to clean up
        first.wait()
    assert set(before) <= set(digests(tmp_path / "run"))
    third = command("train", str(path), "num_epochs=1", "--overwrite", "--no-progress")
    assert third.returncode == 0, third.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_the_run_with_one_line_and_the_command_to_continue(
    tmp_path, signum
):
    run, path = start_run(tmp_path, 6, stderr=subprocess.PIPE)
    last = tmp_path / "run" / "last.pt"
    while run.poll() is None and not last.exists():
        time.sleep(0.05)
    run.send_signal(signum)
    stderr = run.communicate(timeout=120)[1]
    line = one_line(run.returncode, stderr, expected_status=128 + signum)
    name = signal.Signals(signum).name
    assert f"stopped by {name}; {last} holds epoch" in line, line
    again = shlex.split(line.split("continue with: ")[1])
    assert again == [
        "neural-stack",
        "train",
        str(path),
        "--no-progress",
        "--resume",
        str(last),
    ]
    if signum == signal.SIGTERM:  # the printed command finishes the run
        done = command(*again[1:])
        assert done.returncode == 0 and "done after 6 epochs" in done.stdout, (
            done.stderr
        )


def test_a_full_disk_names_the_file_and_the_last_good_checkpoint(
    tmp_path, capsys, monkeypatch
):
    config = apply_overrides(
        TrainConfig(), ["num_epochs=3", f"checkpoint_dir={tmp_path / 'run'}"]
    )
    path = save_config(config, tmp_path / "c.yaml")
    fsync, last = os.fsync, tmp_path / "run" / "last.pt"

    def full_after_the_first_epoch(fd):
        a_file = stat.S_ISREG(os.fstat(fd).st_mode)  # the folders still sync
        if a_file and last.exists() and load_checkpoint(last)["epoch"] >= 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_after_the_first_epoch)
    line = one_line(
        main(["train", str(path), "--no-progress"]), capsys.readouterr().err
    )
    assert "No space left on device while writing " + str(tmp_path / "run") in line, (
        line
    )
    assert f"{last} holds epoch 1" in line, line
    monkeypatch.setattr(os, "fsync", fsync)
    assert load_checkpoint(last)["epoch"] == 1


# loggers


def test_tensorboard_logs_each_epoch_and_its_folder_belongs_to_the_run(
    tmp_path, capsys
):
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    config = apply_overrides(
        TrainConfig(),
        ["num_epochs=2", "loggers=[tensorboard]", f"checkpoint_dir={tmp_path / 'run'}"],
    )
    results = train(config, progress=False)
    assert [p.name for p in run_files(tmp_path / "run")] == [
        "best.pt",
        "config.yaml",
        "last.pt",
        "tensorboard",  # and no metrics.csv: csv is not among the loggers
    ]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    scalars = events.Scalars("val/accuracy")
    assert [e.step for e in scalars] == [h["epoch"] for h in results["history"]]
    expected = [h["val/accuracy"] for h in results["history"]]
    assert [e.value for e in scalars] == pytest.approx(expected, rel=1e-6)  # float32
    path = save_config(apply_overrides(config, ["loggers=[csv]"]), tmp_path / "c.yaml")
    (tmp_path / "run" / "config.yaml").unlink()
    (tmp_path / "run" / "last.pt").unlink()
    (tmp_path / "run" / "best.pt").unlink()
    line = one_line(main(["train", str(path)]), capsys.readouterr().err)
    assert "holds a run already (tensorboard)" in line, line
    assert (
        main(["train", str(path), "num_epochs=1", "--overwrite", "--no-progress"]) == 0
    )
    assert [p.name for p in run_files(tmp_path / "run")][-1] == "metrics.csv"
    assert not (tmp_path / "run" / "tensorboard").exists()


class FakeWandb(types.ModuleType):
    "Stands in for the wandb package: records what a run sends it."

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], []

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return types.SimpleNamespace(
            log=lambda metrics, step: self.logged.append((step, dict(metrics))),
            finish=lambda exit_code=0: self.finished.append(exit_code),
        )


def test_wandb_logs_each_epoch_into_the_experiments_project(tmp_path, monkeypatch):
    wandb = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    config = apply_overrides(
        TrainConfig(),
        [
            "num_epochs=1",
            "experiment_name=digits-wandb",
            "loggers=[csv, wandb]",
            f"checkpoint_dir={tmp_path / 'run'}",
        ],
    )
    results = train(config, progress=False)
    assert [i["project"] for i in wandb.inits] == ["digits-wandb"]
    assert wandb.inits[0]["config"]["loggers"] == ["csv", "wandb"]
    assert wandb.logged == [(1, results["final"])] and wandb.finished == [0]
    assert (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
@pytest.mark.parametrize("dry", [False, True], ids=["train", "dry run"])
def test_a_missing_logger_package_is_one_line_before_anything_is_written(
    tmp_path, capsys, monkeypatch, logger, dry
):
    monkeypatch.setitem(sys.modules, logger, None)  # as if it were not installed
    path = save_config(TrainConfig(), tmp_path / "c.yaml")
    args = ["train", str(path), f"loggers=[csv, {logger}]"]
    args += [f"checkpoint_dir={tmp_path / 'run'}"] + (["--dry-run"] if dry else [])
    line = one_line(main(args), capsys.readouterr().err)
    assert f"loggers: '{logger}' needs the {logger} package: pip install " in line
    assert f"'neural-stack[{logger}]'" in line and not (tmp_path / "run").exists()


def test_a_resumed_run_may_change_its_threads_and_loggers():
    saved = config_to_dict(TrainConfig())
    now = apply_overrides(TrainConfig(), ["threads=2", "loggers=[csv, tensorboard]"])
    assert resume_conflicts(saved, config_to_dict(now)) == []
    other = apply_overrides(now, ["optimizer.lr=1e-2"])
    assert resume_conflicts(saved, config_to_dict(other)) == [
        "optimizer.lr: 0.001 there, 0.01 here"
    ]


# evaluating a checkpoint


def last_logged(folder):
    "The last row of metrics.csv in `folder`, each value as written."
    with open(folder / "metrics.csv", newline="") as f:
        return {k: float(v) for k, v in list(csv.DictReader(f))[-1].items()}


def test_evaluate_reproduces_the_runs_last_validation(finished):
    folder = finished[1]
    result = evaluate(folder / "last.pt")
    logged = last_logged(folder)
    assert result["top1"] == logged["val/accuracy"] and result["epoch"] == 1
    assert result["loss"] == logged["val/loss"]
    assert result["top1"] <= result["top5"] <= 1 and result["images"] == 297
    labels = torch.cat([y for _, y in build_dataloaders(result["config"].data)[1]])
    assert torch.equal(result["confusion"].sum(1), torch.bincount(labels))
    assert int(result["confusion"].trace()) == round(result["top1"] * 297)
    other = evaluate(folder / "last.pt", ["data.batch_size=50", "data.num_workers=1"])
    assert other["top1"] == result["top1"] and torch.equal(
        other["confusion"], result["confusion"]
    )
    assert other["loss"] == pytest.approx(result["loss"], rel=1e-5)
    assert multiprocessing.active_children() == []


def test_eval_prints_one_line_and_writes_an_offline_confusion_page(
    finished, tmp_path, capsys
):
    last, page = finished[1] / "last.pt", tmp_path / "confusion.html"
    status = main(["eval", str(last), "--confusion", str(page), "--batch-size", "50"])
    out = capsys.readouterr().out
    top1 = last_logged(finished[1])["val/accuracy"]
    assert status == 0 and len(out.splitlines()) == 1, out
    assert out.startswith(f"{last} (epoch 1) on 297 validation images of digits: ")
    assert f"top-1 {top1:.4f}, top-5 " in out, out
    html = page.read_text()
    assert "Plotly.newPlot" in html and '<script src="http' not in html
    assert len(html) > 1_000_000  # plotly.js itself, so that the page opens offline


def checkpoint_of_a_bare_trainer(good, bad):
    "A valid checkpoint that holds no run configuration (`run_config` None)."
    checkpoint = load_checkpoint(good)
    checkpoint.pop("checksum")
    checkpoint["config"] = None
    save_checkpoint(checkpoint, bad)


@pytest.mark.parametrize(
    "make,extra,match",
    [
        (lambda good, bad: bad.write_bytes(good.read_bytes()[:4000]), [], "not a "),
        (lambda good, bad: None, [], "no such file"),
        (flip_a_weight_byte, [], "damaged"),
        (checkpoint_of_a_bare_trainer, [], "holds no run configuration"),
        (shutil.copy, ["data.batch_sise=5"], "data.batch_sise: unknown key"),
        (shutil.copy, ["model.embed_dim=32"], "its weights do not fit the model"),
        (shutil.copy, ["--max-parameters", "1000"], "more than MAX_PARAMETERS=1,000"),
        (shutil.copy, ["device=cuda:99"], "cuda:99"),
    ],
    ids=[
        "truncated",
        "missing",
        "flipped byte",
        "no config",
        "unknown key",
        "another model",
        "too large",
        "no device",
    ],
)
def test_eval_problems_are_one_line_and_exit_2(
    finished, tmp_path, capsys, make, extra, match
):
    bad, page = tmp_path / "bad.pt", tmp_path / "c.html"
    make(finished[1] / "last.pt", bad)
    status = main(["eval", str(bad), *extra, "--confusion", str(page)])
    out, err = capsys.readouterr()
    line = one_line(status, err)
    assert line.startswith("neural-stack: error: ") and re.search(match, line), line
    assert out == "" and not page.exists()
