"""Recorded runs (`runs/`, chapter 13): a record is read back exactly and only for the run
it recorded, is written only when asked, and `neural-stack runs check` fails when the code
no longer reproduces it."""

import json
import os
import shutil
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from torch import nn

from neural_stack import experiments
from neural_stack.cli import main
from neural_stack.models import VisionTransformer
from neural_stack.experiments import (
    RecordError,
    RunRecords,
    code_fingerprint,
    slug,
    sweep,
    weights_digest,
)
from neural_stack.training import (
    DataConfig,
    ModelConfig,
    SchedulerConfig,
    TrainConfig,
    apply_overrides,
)
from neural_stack.training.transfer import DistillationTrainer
from neural_stack.validation import ArgumentError

ROOT = Path(__file__).resolve().parents[1]
TINY = TrainConfig(
    model=ModelConfig(
        img_size=8,
        patch_size=4,
        in_channels=1,
        num_classes=10,
        embed_dim=16,
        num_heads=2,
        num_layers=1,
    ),
    scheduler=SchedulerConfig(name="cosine_warmup", warmup_epochs=1),
    data=DataConfig(dataset="digits", batch_size=100),
    num_epochs=2,
    device="cpu",
)

ONE = apply_overrides(TINY, ["num_epochs=1", "scheduler.warmup_epochs=0"])


@pytest.fixture
def recorded(tmp_path):
    "A folder with one record of TINY, its weights kept, and the records object."
    records = RunRecords(tmp_path / "runs", write=True)
    run = records.run("tiny/seed-0", TINY, weights=True, verbose=False)
    return records, run


def test_a_record_is_read_back_exactly_for_the_same_run_only(recorded, capsys):
    records, first = recorded
    assert first.source == "trained"
    folder = records.folder("tiny/seed-0")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.yaml",
        "metrics.csv",
        "model.pt",
        "record.json",
    ]
    reader = RunRecords(records.root, write=False)
    again = reader.run("tiny/seed-0", TINY, weights=True)
    assert again.source == "record"
    assert again.history == first.history  # every float as it was trained
    assert weights_digest(again.model) == weights_digest(first.model)
    assert again.parameters == first.parameters
    assert "read from" in capsys.readouterr().out
    # where a run writes and how often it reports are not part of what it computes
    moved = apply_overrides(TINY, ["checkpoint_dir=elsewhere", "log_every=1"])
    assert reader.run("tiny/seed-0", moved, verbose=False).source == "record"
    # anything else is another run: it trains, and a reader writes nothing
    before = (folder / "metrics.csv").read_bytes()
    other = reader.run("tiny/seed-0", apply_overrides(TINY, ["seed=1"]))
    assert other.source == "trained" and other.history != first.history
    assert "trained here" in capsys.readouterr().out
    assert (folder / "metrics.csv").read_bytes() == before
    assert reader.names() == ["tiny/seed-0"]


def test_the_trainer_and_its_teacher_are_part_of_the_record(recorded):
    records, teacher = recorded
    student = dict(trainer_class=DistillationTrainer, teacher_model=teacher)
    soft = records.run("student", TINY, verbose=False, distillation="soft", **student)
    assert soft.source == "trained"
    spec = json.loads((records.folder("student") / "record.json").read_text())
    assert spec["trainer"]["kwargs"]["teacher_model"] == {
        "run": "tiny/seed-0",
        "weights": weights_digest(teacher.model),
    }
    again = records.run("student", TINY, verbose=False, distillation="soft", **student)
    assert again.source == "record" and again.history == soft.history
    hard = records.run("student", TINY, verbose=False, distillation="hard", **student)
    assert hard.source == "trained"  # another argument: another run, recorded anew
    retrained = records.retrain("student", epochs=1).history[0]
    assert retrained.pop("seconds") and hard.history[0].pop("seconds")
    assert retrained == hard.history[0]
    assert records.run("student", TINY, verbose=False).source == "trained"


def test_nothing_is_written_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("NEURAL_STACK_RECORD", raising=False)
    reader = RunRecords(tmp_path / "runs")
    assert reader.write is False
    reader.run("tiny", ONE, verbose=False)
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("NEURAL_STACK_RECORD", "1")
    assert RunRecords(tmp_path / "runs").write is True


def test_a_folder_that_is_not_a_record_is_never_replaced(tmp_path):
    records = RunRecords(tmp_path, write=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(RecordError, match="is not a record: not replaced"):
        records.run("mine", ONE, verbose=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no partial folder


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(name="Bad Name"), "name"),
        (dict(name="../outside"), "name"),
        (dict(name="ok", teacher_model=object()), "teacher_model"),
        (dict(name="ok", trainer_class=dict), "trainer_class"),
    ],
)
def test_bad_record_arguments_are_refused_before_training(tmp_path, kwargs, field):
    with pytest.raises(ArgumentError, match=f"^{field}="):
        RunRecords(tmp_path).run(config=TINY, verbose=False, **kwargs)


def test_a_sweep_reads_its_records_and_says_so(tmp_path, capsys):
    variants = {"learned, 1-D": [], "none": ["model.positional_embedding=none"]}
    one = dict(variants=variants, seeds=[0], verbose=False, name="sweep")
    trained = sweep(TINY, records=RunRecords(tmp_path, write=True), **one)
    assert capsys.readouterr().out.startswith("2 runs trained here")
    assert RunRecords(tmp_path).names() == [
        "sweep/learned-1-d/seed-0",
        "sweep/none/seed-0",
    ]
    read = sweep(TINY, records=RunRecords(tmp_path), **one)
    assert capsys.readouterr().out.startswith(f"2 runs read from {tmp_path}")
    pd.testing.assert_frame_equal(
        trained.drop(columns="seconds"), read.drop(columns="seconds")
    )
    with pytest.raises(ArgumentError, match="^variants="):  # two names, one folder
        sweep(TINY, {"a b": [], "a-b": []}, records=RunRecords(tmp_path), name="x")


def test_slug():
    assert slug("hard + token, cnn teacher") == "hard-token-cnn-teacher"
    assert slug("vit, 10%") == "vit-10"


def test_select_names_records_and_folders_of_records(tmp_path):
    records = RunRecords(tmp_path)
    for name in ["a/x/seed-1", "a/x/seed-0", "a/y/seed-2", "b/teacher", "c"]:
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "record.json").write_text("{}")
    assert records.names() == [
        "a/x/seed-0",
        "a/x/seed-1",
        "a/y/seed-2",
        "b/teacher",
        "c",
    ]
    assert records.select(["a"]) == ["a/x/seed-0", "a/x/seed-1", "a/y/seed-2"]
    with pytest.raises(RecordError, match="no record 'd'"):
        records.select(["d"])


def test_check_passes_on_a_record_and_names_what_moved(recorded, capsys):
    records, _ = recorded
    assert records.check() == []
    assert "tiny/seed-0 re-trained: train/loss" in capsys.readouterr().out
    metrics = records.folder("tiny/seed-0") / "metrics.csv"
    table = pd.read_csv(metrics)
    table.loc[0, "val/loss"] *= 1.1
    table.to_csv(metrics, index=False)
    (problem,) = records.check()
    assert problem.startswith(
        "tiny/seed-0: re-training no longer gives its record: val/loss"
    )


def test_check_of_every_record_re_trains_every_seed(tmp_path, capsys):
    records = RunRecords(tmp_path, write=True)
    sweep(TINY, {"v": []}, seeds=[0, 1], verbose=False, records=records, name="s")
    metrics = records.folder("s/v/seed-1") / "metrics.csv"
    table = pd.read_csv(metrics)
    table.loc[0, "train/loss"] *= 1.1
    table.to_csv(metrics, index=False)
    assert records.check() == []  # the default sample re-trains seed 0 only
    (problem,) = records.check(records.names())
    assert problem.startswith("s/v/seed-1: re-training no longer gives its record")
    assert "s/v/seed-0 re-trained" in capsys.readouterr().out


def test_check_fails_where_the_code_changed_since_the_record(recorded):
    records, _ = recorded
    path = records.folder("tiny/seed-0") / "record.json"
    record = json.loads(path.read_text())
    record["fingerprint"]["neural_stack.training.trainer"] = "0" * 16
    path.write_text(json.dumps(record))
    assert records.check() == [
        "records made by code that has changed since: "
        "neural_stack.training.trainer (1 records)"
    ]


def test_a_fingerprint_ignores_comments_docstrings_and_layout(tmp_path, monkeypatch):
    package = tmp_path / "fp_demo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = 'def f(x):\n    "Double."\n    return 2 * x  # twice\n'
    variants = {
        "same": 'def f(x):\n    """Twice x, documented otherwise."""\n\n    return 2*x\n',
        "changed": 'def f(x):\n    "Double."\n    return 3 * x  # twice\n',
    }
    monkeypatch.syspath_prepend(str(tmp_path))
    hashes = {}
    for name, text in {"original": source, **variants}.items():
        (package / "mod.py").write_text(text)
        sys.modules.pop("fp_demo.mod", None)
        hashes[name] = code_fingerprint(["fp_demo.mod", "fp_demo.mod:f"])
    assert hashes["same"] == hashes["original"] != hashes["changed"]


def test_a_broken_record_is_one_clear_error(recorded):
    records, _ = recorded
    (records.folder("tiny/seed-0") / "config.yaml").write_text("num_epochs: [")
    with pytest.raises(RecordError, match=r"tiny/seed-0 cannot be read"):
        records.run("tiny/seed-0", TINY, verbose=False)


def test_rebuild_trains_again_and_finds_the_record_unchanged(recorded, capsys):
    records, first = recorded
    assert records.rebuild() == {"tiny/seed-0": True}
    again = records.load("tiny/seed-0", weights=True)
    assert again.history[-1]["val/loss"] == first.history[-1]["val/loss"]
    assert weights_digest(again.model) == weights_digest(first.model)


def test_the_runs_command_exit_statuses(recorded, tmp_path, capsys):
    records, _ = recorded
    root = str(records.root)
    assert main(["runs", "check", "--root", root]) == 0
    assert "1 records checked" in capsys.readouterr().out
    assert main(["runs", "check", "nothing", "--root", root]) == 2
    assert (
        capsys.readouterr().err
        == f"neural-stack: error: no record 'nothing' in {root}\n"
    )
    assert main(["runs", "check", "--root", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("neural-stack: error: no records in ")
    metrics = records.folder("tiny/seed-0") / "metrics.csv"
    table = pd.read_csv(metrics)
    table.loc[0, "train/loss"] *= 1.1
    table.to_csv(metrics, index=False)
    assert main(["runs", "check", "--root", root]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("neural-stack: tiny/seed-0: re-training no longer gives")
    assert "make runs" in err[-1]
    assert main(["runs", "rebuild", "tiny", "--root", root]) == 0
    assert "1 records rebuilt, 1 changed" in capsys.readouterr().out
    assert main(["runs", "check", "--root", root]) == 0


# A record of each kind the book holds: a sweep's ViT, and a distillation student (its
# teacher's record loaded for it).
SAMPLE = [
    "positions/learned-1d-class-token/seed-0",
    "distillation/students/soft-cnn-teacher/seed-0",
]
PERTURBATIONS = {
    "none": None,
    "init scale": (
        "models/vision_transformer.py",
        "nn.init.trunc_normal_(module.weight, std=0.02)",
        "nn.init.trunc_normal_(module.weight, std=0.03)",
    ),
    "warm-up default": (
        "training/factory.py",
        "start_factor=1 / (warmup + 1)",
        "start_factor=2 / (warmup + 1)",
    ),
}


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_check_runs_fails_on_a_perturbed_copy_of_the_code(tmp_path, perturbation):
    copy = tmp_path / "neural_stack"
    shutil.copytree(
        ROOT / "neural_stack", copy, ignore=shutil.ignore_patterns("__pycache__")
    )
    if PERTURBATIONS[perturbation]:
        path, old, new = PERTURBATIONS[perturbation]
        source = (copy / path).read_text()
        assert source.count(old) == 1
        (copy / path).write_text(source.replace(old, new))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "neural_stack.cli",
            "runs",
            "check",
            *SAMPLE,
            "--root",
            str(ROOT / "runs"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert (
        str(copy)
        in subprocess.run(
            [sys.executable, "-c", "import neural_stack; print(neural_stack.__file__)"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        ).stdout
    )  # the copy is the code that ran
    if perturbation == "none":
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 1, done.stdout + done.stderr
    # the fingerprint names the change, and the re-trained epochs show it in the numbers
    assert "records made by code that has changed since" in done.stderr
    moved = [
        line
        for line in done.stderr.splitlines()
        if "no longer gives its record" in line
    ]
    assert {line.split(":")[1].strip() for line in moved} == set(SAMPLE), done.stderr


def test_a_record_that_starts_from_another_is_read_from_any_folder(
    tmp_path, monkeypatch, capsys
):
    repo = tmp_path / "repo"
    short = TrainConfig(num_epochs=1, device="cpu")
    RunRecords(repo / "runs", write=True).run("base/seed-0", short, weights=True)
    monkeypatch.chdir(repo)
    tuned = apply_overrides(short, ["model.init_from=runs/base/seed-0"])
    made = RunRecords("runs", write=True).run("tuned/seed-0", tuned, verbose=False)
    assert made.source == "trained"
    # the record names the run it starts from relative to the records' root
    assert (
        "init_from: base/seed-0\n"
        in (repo / "runs/tuned/seed-0/config.yaml").read_text()
    )
    (repo / "nbs").mkdir()
    monkeypatch.chdir(repo / "nbs")  # where the chapters run
    records = RunRecords("../runs")
    from_nbs = apply_overrides(short, ["model.init_from=../runs/base/seed-0"])
    read = records.run("tuned/seed-0", from_nbs, verbose=False)
    assert read.source == "record" and read.history == made.history
    capsys.readouterr()
    records.write = True
    assert records.rebuild(["tuned/seed-0", "base/seed-0"]) == {
        "base/seed-0": True,
        "tuned/seed-0": True,
    }  # the run it starts from first, and both bit for bit
    order = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    assert order == ["base/seed-0", "tuned/seed-0"]


def test_a_run_whose_code_changed_while_it_trained_is_not_recorded(
    tmp_path, monkeypatch
):
    records = RunRecords(tmp_path / "runs", write=True)
    real = experiments.code_fingerprint
    calls = []

    def drifting(*args, **kwargs):  # the code on disk changes after the first look
        calls.append(1)
        found = real(*args, **kwargs)
        return found if len(calls) == 1 else {**found, "neural_stack.models": "edited"}

    monkeypatch.setattr(experiments, "code_fingerprint", drifting)
    with pytest.raises(RecordError, match="the code changed while it trained"):
        records.run("tiny/seed-0", ONE, verbose=False)
    assert not (tmp_path / "runs" / "tiny").exists()
    monkeypatch.setattr(experiments, "code_fingerprint", real)
    run = records.run("tiny/seed-0", ONE, verbose=False)  # unchanged code: recorded
    saved = json.loads((records.folder("tiny/seed-0") / "record.json").read_text())
    assert (
        saved["fingerprint"]
        == run.fingerprint
        == experiments.run_fingerprint(run.model)
    )
    assert records.load("tiny/seed-0").fingerprint == run.fingerprint


def test_a_run_is_fingerprinted_by_its_own_model_modules_only():
    vit = VisionTransformer(img_size=8, patch_size=4, embed_dim=8, num_heads=2)
    package = "neural_stack.models"
    expected = ("attention", "patch_embedding", "positional_embedding")
    expected = tuple(f"{package}.{m}" for m in (*expected, "vision_transformer"))
    assert experiments.model_modules(vit) == expected
    assert experiments.model_modules(nn.Sequential(nn.Conv2d(1, 2, 3))) == ()
    parts = experiments.run_fingerprint(vit)
    assert list(parts) == [*experiments.FINGERPRINTED, *expected]
    assert parts == experiments.code_fingerprint(list(parts))


def test_check_retrains_one_seed_of_each_run_unless_asked_for_all(tmp_path, capsys):
    records = RunRecords(tmp_path / "runs", write=True)
    for seed in (0, 1):
        records.run(f"tiny/seed-{seed}", replace(ONE, seed=seed), verbose=False)
    records.run(
        "wider/seed-0", apply_overrides(ONE, ["model.embed_dim=32"]), verbose=False
    )
    assert records.sample() == ["tiny/seed-0", "wider/seed-0"]
    capsys.readouterr()
    assert main(["runs", "check", "--root", str(records.root)]) == 0
    out = capsys.readouterr().out
    assert "3 records checked, 2 of them re-trained" in out
    assert "tiny/seed-1 re-trained" not in out
    assert main(["runs", "check", "--all", "--root", str(records.root)]) == 0
    assert "3 records checked, 3 of them re-trained" in capsys.readouterr().out


def _age(records: RunRecords, name: str) -> dict:
    "Give the record `name` the fingerprint of an older trainer; return that one."
    path = records.folder(name) / "record.json"
    record = json.loads(path.read_text())
    record["fingerprint"]["neural_stack.training.trainer"] = "0" * 16
    path.write_text(json.dumps(record))
    return record["fingerprint"]


def test_rekey_rebuilds_one_seed_and_rekeys_the_others_only_if_it_is_unchanged(
    tmp_path, capsys
):
    records = RunRecords(tmp_path / "runs", write=True)
    for seed in (0, 1, 2):
        records.run(f"tiny/seed-{seed}", replace(ONE, seed=seed), verbose=False)
    records.run("wide/seed-0", apply_overrides(ONE, ["model.embed_dim=32"]))
    old = [_age(records, f"tiny/seed-{seed}") for seed in (0, 1, 2)]
    assert records.check(names=[]) != []
    fate = records.rekey()
    assert fate == {
        "tiny/seed-0": "unchanged",
        "tiny/seed-1": "rekeyed",
        "tiny/seed-2": "rekeyed",
    }
    assert records.check(names=[]) == []  # every fingerprint current
    second = json.loads((records.folder("tiny/seed-1") / "record.json").read_text())
    assert second["rekeyed"] == {"by": "tiny/seed-0", "fingerprint": old[1]}
    assert records.rekey() == {}  # nothing stale: nothing trained

    # A first seed that no longer reproduces its record: every seed is rebuilt.
    for seed in (0, 1):
        _age(records, f"tiny/seed-{seed}")
    metrics = records.folder("tiny/seed-0") / "metrics.csv"
    metrics.write_text(metrics.read_text().replace("0.", "0.9", 1))
    assert records.rekey(["tiny/seed-0", "tiny/seed-1"]) == {
        "tiny/seed-0": "changed",
        "tiny/seed-1": "unchanged",
    }
    after = json.loads((records.folder("tiny/seed-1") / "record.json").read_text())
    assert "rekeyed" not in after and records.check(names=[]) == []
    capsys.readouterr()
    assert main(["runs", "rekey", "--root", str(records.root)]) == 0
    assert (
        "0 records rebuilt (0 unchanged, 0 changed), 0 rekeyed"
        in capsys.readouterr().out
    )
