"""`neural-stack train`: the console script and `python -m neural_stack.cli`, offline,
end to end."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from neural_stack.cli import main
from neural_stack.training.config import apply_overrides, load_config
from neural_stack.training.run import train

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = shutil.which("neural-stack", path=str(Path(sys.executable).parent))


def run(*args, module=False):
    command = [sys.executable, "-m", "neural_stack.cli"] if module else [SCRIPT]
    return subprocess.run(
        command + list(args), capture_output=True, text=True, cwd=ROOT, timeout=600
    )


@pytest.mark.parametrize("module", [False, True], ids=["console script", "python -m"])
def test_trains_the_default_config_offline_and_leaves_its_files(tmp_path, module):
    assert SCRIPT, "the console script is not installed: pip install -e ."
    done = run(
        "train",
        "configs/vit_digits.yaml",
        "num_epochs=2",
        "scheduler.warmup_epochs=1",
        f"checkpoint_dir={tmp_path}",
        module=module,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == [
        "best.pt",
        "config.yaml",
        "last.pt",
        "metrics.csv",
    ]
    assert (
        str(tmp_path) in done.stdout
        and "best.pt" in done.stdout
        and "metrics.csv" in done.stdout
    )
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 2
    assert (
        torch.load(tmp_path / "best.pt", weights_only=True)["config"]["num_epochs"] == 2
    )
    assert load_config(tmp_path / "config.yaml").checkpoint_dir == str(tmp_path)


@pytest.mark.parametrize(
    "args,match",
    [
        (
            ["configs/vit_digits.yaml", "optimizer.lrr=1e-3"],
            "optimizer.lrr: unknown key; did you mean 'lr'?",
        ),
        (
            ["configs/vit_digits.yaml", "model.in_channels=3"],
            "model.in_channels=3; expected 1",
        ),
        (["configs/missing.yaml"], "No such file or directory"),
        (["configs/vit_digits.yaml", "device=cuda:7"], "use device='auto'"),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path, args, match):
    if "device=cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    done = run("train", *args, f"checkpoint_dir={tmp_path}")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("neural-stack: error: ")
        and match in lines[0]
    )
    assert "Traceback" not in done.stderr


def test_a_yaml_tag_in_a_config_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"num_epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["train", str(path)]) == 2
    assert "YAML tags are refused, never run" in capsys.readouterr().err
    assert not marker.exists()


def test_usage_errors_from_argparse():
    done = run()
    assert done.returncode == 2 and "usage: neural-stack" in done.stderr


def test_published_weights_offline_are_one_warning_line_and_random_weights(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no network, no cache
    (tmp_path / "run.yaml").write_text("data:\n  dataset: digits\n")
    out = tmp_path / "out"
    command = [SCRIPT, "train", str(tmp_path / "run.yaml")]
    command += [f"checkpoint_dir={out}"]
    command += [
        "model.name=vit_tiny_patch16_224.augreg_in21k",
        "model.source=timm",
        "model.pretrained=true",
        "model.img_size=32",
        "model.in_channels=1",
        "model.num_classes=10",
        "data.img_size=32",
        "--dry-run",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, lines
    assert lines[0].startswith("neural-stack: warning: model.pretrained=True: ")
    assert "could not download timm's weights 'vit_tiny_patch16_224" in lines[0]
    assert "starting from random weights" in lines[0]
    assert not out.exists()  # a dry run writes nothing


def test_list_prints_the_registries_as_aligned_text():
    models, datasets = run("list", "models"), run("list", "datasets")
    assert models.returncode == datasets.returncode == 0, models.stderr
    rows = {line.split()[0]: line for line in models.stdout.splitlines()[1:4]}
    assert set(rows) == {"vit", "resnet18", "cnn"}
    assert "custom, timm, torchvision" in rows["vit"]
    words = " ".join(models.stdout.split())  # the note is wrapped to 88 characters
    assert "with model.source=timm, any timm.list_models() name" in words
    assert "ViTs ported into ours" in words
    assert max(map(len, models.stdout.splitlines())) <= 88
    lines = datasets.stdout.splitlines()
    header, digits = lines[0], next(line for line in lines if line.startswith("digits"))
    assert digits.split() == [
        "digits",
        "8x8",
        "1",
        "10",
        "1,500",
        "297",
        "ships",
        "offline",
    ]
    assert header.index("train") == digits.index("1,500")  # aligned columns
    cifar = next(line for line in lines if line.startswith("cifar10 "))
    assert cifar.endswith("downloads into data.data_dir")


def test_eval_through_the_console_script(tmp_path):
    config = apply_overrides(
        load_config(ROOT / "configs/vit_digits.yaml"),
        ["num_epochs=1", "scheduler.warmup_epochs=0", f"checkpoint_dir={tmp_path}"],
    )
    train(config, progress=False)
    done = run("eval", str(tmp_path / "best.pt"), "data.num_workers=1")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 and ", top-5 " in done.stdout
    assert done.stdout.startswith(f"{tmp_path / 'best.pt'} (epoch 1) on ")
