"""TrainConfig: strict YAML, exact round trips, overrides, every kind of bad config."""

import math
from pathlib import Path

import pytest
import torch
import yaml

from neural_stack.training.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    atomic_open,
    build_from_config,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
    steps_per_epoch,
)

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_run_on_the_digits_and_the_documented_use_works(tmp_path):
    config = TrainConfig()
    assert (
        config.data.dataset == "digits"
        and config.model.img_size == 8
        and config.model.in_channels == 1
    )
    config.model.embed_dim = 512  # the programme's documented use
    path = save_config(config, tmp_path / "c.yaml")
    assert load_config(path).model.embed_dim == 512


def test_round_trip_is_exact_tuples_included(tmp_path):
    config = apply_overrides(
        TrainConfig(),
        [
            "optimizer.betas=[0.8, 0.95]",
            "data.crop_scale=[0.5, 1.0]",
            "grad_clip_norm=2.5",
            "scheduler.T_max=4",
        ],
    )
    again = load_config(save_config(config, tmp_path / "c.yaml"))
    assert again == config
    assert isinstance(again.optimizer.betas, tuple) and isinstance(
        again.data.crop_scale, tuple
    )
    assert config_to_dict(again) == yaml.safe_load((tmp_path / "c.yaml").read_text())


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    save_config(TrainConfig(), tmp_path / "c.yaml")
    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "c.yaml") as f:
            f.write("half a file")
            raise RuntimeError("crash while writing")
    assert load_config(tmp_path / "c.yaml") == TrainConfig()  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_yaml_scientific_notation_is_the_number_it_means(tmp_path):
    assert yaml.safe_load("lr: 3e-4")["lr"] == "3e-4"  # YAML 1.1
    config = load_config(
        write(tmp_path, "optimizer:\n  lr: 3e-4\nscheduler:\n  eta_min: 1E-6\n")
    )
    assert config.optimizer.lr == 3e-4 and config.scheduler.eta_min == 1e-6
    with pytest.raises(ConfigError, match=r"optimizer.lr='fast'; expected a number"):
        load_config(write(tmp_path, "optimizer:\n  lr: fast\n"))


def test_no_yaml_tag_ever_executes(tmp_path):
    marker = tmp_path / "pwned"
    text = f"num_epochs: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(
        ConfigError, match=r"config.yaml:1:13: .*\(YAML tags are refused, never run\)"
    ):
        load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match="YAML tags are refused, never run"):
        load_config(write(tmp_path, "model: !!python/name:os.system\n"))
    with pytest.raises(ConfigError):
        apply_overrides(
            TrainConfig(),
            [f"num_epochs=!!python/object/apply:os.system ['touch {marker}']"],
        )
    assert not marker.exists()


@pytest.mark.parametrize(
    "text,match",
    [
        (
            "num_epoch: 3\n",
            r"num_epoch: unknown key; did you mean 'num_epochs'\?$",
        ),
        (
            "model:\n  embed_dims: 3\n",
            r"model.embed_dims: unknown key; did you mean 'embed_dim'\?$",
        ),
        (
            "optimiser:\n  lr: 0.1\n",
            r"optimiser: unknown key; did you mean 'optimizer'\?",
        ),
        (
            "data:\n  zzz: 1\n",
            r"data.zzz: unknown key; the data section has: dataset, data_dir",
        ),
        ("model: 3\n", r"model=3; expected a mapping of field names to values"),
        ("- 1\n- 2\n", r"config.yaml=\[1, 2\]; expected a mapping"),
    ],
)
def test_unknown_keys_and_shapes(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    "override,match",
    [
        # wrong types
        ("num_epochs=2.5", r"num_epochs=2.5; expected an integer"),
        ("num_epochs=true", r"num_epochs=True; expected an integer"),
        ("data.batch_size=64.0", r"data.batch_size=64.0; expected an integer"),
        ("optimizer.lr=true", r"optimizer.lr=True; expected a number"),
        ("use_amp=1", r"use_amp=1; expected true or false"),
        ("optimizer.betas=0.9", r"optimizer.betas=0.9; expected a list of 2 numbers"),
        ("grad_clip_norm=[1]", r"grad_clip_norm=\[1\]; expected a number or null"),
        ("experiment_name=3", r"experiment_name=3; expected a string"),
        # out of range
        ("num_epochs=0", r"num_epochs=0; expected a positive integer"),
        ("optimizer.lr=-1", r"optimizer.lr=-1.0; expected a finite number > 0"),
        ("optimizer.lr=.inf", r"optimizer.lr=inf; expected a finite number > 0"),
        ("model.dropout=1.0", r"model.dropout=1.0; expected a probability in \[0, 1\)"),
        (
            "label_smoothing=1.5",
            r"label_smoothing=1.5; expected a probability in \[0, 1\)",
        ),
        ("grad_accum_steps=0", r"grad_accum_steps=0; expected a positive integer"),
        ("grad_clip_norm=0", r"grad_clip_norm=0.0; expected a finite number > 0"),
        ("data.batch_size=0", r"data.batch_size=0; expected a positive integer"),
        ("seed=-1", r"seed=-1; expected an integer from 0 to 4294967295"),
        (
            "seed=18446744073709551616",
            r"seed=18446744073709551616; expected an integer",
        ),
        # unknown names
        (
            "optimizer.name=lamb",
            r"optimizer.name='lamb'; expected one of 'adamw', 'adam', 'sgd'",
        ),
        (
            "scheduler.name=plateau",
            r"scheduler.name='plateau'; expected one of 'none', 'step'",
        ),
        ("data.dataset=imagenet", r"data.dataset='imagenet'; expected one of"),
        ("model.name=vit-g", r"model.name='vit-g'; expected one of 'vit'"),
        (
            "model.positional_embedding=rope",
            r"model.positional_embedding='rope'; expected one of 'none'",
        ),
        (
            "device=gpu",
            r"device='gpu'; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'",
        ),
        (
            "amp_dtype=float8",
            r"amp_dtype='float8'; expected one of 'bfloat16', 'float16'",
        ),
        ("monitor=val/f1", r"monitor='val/f1'; expected one of 'val/accuracy'"),
        # settings that cannot work together
        (
            "model.num_heads=3",
            r"model.embed_dim=64; expected a multiple of num_heads=3",
        ),
        (
            "model.patch_size=3",
            r"model.img_size=8; expected a multiple of patch_size=3",
        ),
        (
            "model.img_size=32",
            r"model.img_size=32; expected 8, the img_size of dataset 'digits' \(or resize: data.img_size\)",
        ),
        (
            "model.in_channels=3",
            r"model.in_channels=3; expected 1, the in_channels of dataset 'digits'",
        ),
        (
            "model.num_classes=100",
            r"model.num_classes=100; expected 10, the num_classes of dataset 'digits'",
        ),
        (
            "scheduler.eta_min=1",
            r"scheduler.eta_min=1.0; expected at most optimizer.lr=0.001",
        ),
        ("threads=0", r"threads=0; expected 'auto' or 1 to 1024"),
        ("threads=fast", r"threads='fast'; expected 'auto' or 1 to 1024"),
        ("loggers=[csv, csv]", r"loggers=\['csv', 'csv'\]; expected each logger at"),
        (
            "loggers=[tb]",
            r"loggers='tb'; expected one of 'csv', 'tensorboard', 'wandb'",
        ),
    ],
)
def test_bad_values_name_the_dotted_path(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(TrainConfig(), [override])


def test_warmup_longer_than_the_run_says_how_to_fix_it(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"scheduler.warmup_epochs=10.0; expected a warm-up shorter than the run: "
        r"240 warm-up steps against its 240 optimizer steps \(24 per epoch\); lower "
        r"scheduler.warmup_epochs or raise num_epochs",
    ):
        apply_overrides(
            TrainConfig(),
            ["scheduler.name=cosine_warmup", "scheduler.warmup_epochs=10"],
        )
    # warm-up counts in optimizer steps: with one step per epoch, 0.4 and 0.9 of an
    # epoch are 0 and 1 steps, which a 10-epoch run builds and a 1-epoch run refuses
    one_step = ["data.batch_size=4096", "scheduler.name=cosine_warmup"]
    for fraction in (0.4, 0.9):
        config = apply_overrides(
            TrainConfig(), [*one_step, f"scheduler.warmup_epochs={fraction}"]
        )
        assert build_from_config(config)["scheduler"] is not None
    with pytest.raises(
        ConfigError, match=r"1 warm-up steps against its 1 optimizer steps"
    ):
        apply_overrides(
            TrainConfig(), [*one_step, "scheduler.warmup_epochs=0.9", "num_epochs=1"]
        )


@pytest.mark.parametrize("model", ["cnn", "resnet18"])
def test_batch_norm_never_gets_a_batch_of_one_image(model):
    cnn = [f"model.name={model}", "model.embed_dim=16"]
    # 750 training images in batches of 7 end with a batch of one
    with pytest.raises(
        ConfigError,
        match=r"data.batch_size=7; expected a size that does not leave a last batch "
        r"of one image: 750 training images in batches of 7 do.*; try 8",
    ):
        apply_overrides(
            TrainConfig(), [*cnn, "data.train_fraction=0.5", "data.batch_size=7"]
        )
    with pytest.raises(ConfigError, match=r"data.train_fraction=1e-09; expected a "):
        apply_overrides(TrainConfig(), [*cnn, "data.train_fraction=1e-9"])
    # the suggested size trains every batch, and a ViT (layer norm) takes any size
    config = apply_overrides(
        TrainConfig(), [*cnn, "data.train_fraction=0.5", "data.batch_size=8"]
    )
    assert build_from_config(config)["model"] is not None
    apply_overrides(TrainConfig(), ["data.train_fraction=0.5", "data.batch_size=7"])


def test_a_model_too_large_is_refused_before_anything_is_allocated():
    config = apply_overrides(TrainConfig(), ["model.embed_dim=76800"])
    with pytest.raises(
        ConfigError, match=r"^model: [\d,]+ parameters, more than MAX_PARAMETERS"
    ):
        build_from_config(config)
    with pytest.raises(
        ConfigError,
        match=r"^model.num_layers=100000; expected an integer from 1 to 512",
    ):
        build_from_config(apply_overrides(TrainConfig(), ["model.num_layers=100000"]))


def test_layer_decay_is_refused_for_models_without_layers():
    with pytest.raises(
        ConfigError,
        match=r"optimizer.layer_decay=0.7; expected 1.0 for model.name='resnet18'",
    ):
        apply_overrides(
            TrainConfig(), ["model.name=resnet18", "optimizer.layer_decay=0.7"]
        )


def test_a_value_mutated_after_construction_is_caught_when_components_are_built():
    config = TrainConfig()
    config.model.num_heads = 3
    with pytest.raises(
        ConfigError, match=r"model.embed_dim=64; expected a multiple of num_heads=3"
    ):
        build_from_config(config)
    config = TrainConfig()
    config.optimizer = "adamw"
    with pytest.raises(
        ConfigError, match=r"optimizer='adamw'; expected a OptimizerConfig"
    ):
        config.validate()


def test_overrides(tmp_path):
    base = TrainConfig()
    run = apply_overrides(
        base,
        [
            "optimizer.lr=1e-3",
            "num_epochs=4",
            "model.img_size=[8, 8]",
            "grad_clip_norm=null",
        ],
    )
    assert (
        run.optimizer.lr,
        run.num_epochs,
        run.model.img_size,
        run.grad_clip_norm,
    ) == (1e-3, 4, 8, None)
    assert base == TrainConfig()  # the original is untouched
    with pytest.raises(
        ConfigError, match=r"optimizer.lrr: unknown key; did you mean 'lr'\?"
    ):
        apply_overrides(base, ["optimizer.lrr=1"])
    with pytest.raises(ConfigError, match=r"num_epochs: is a value, not a section"):
        apply_overrides(base, ["num_epochs.x=1"])
    with pytest.raises(ConfigError, match=r"expected key.path=value"):
        apply_overrides(base, ["num_epochs"])


def test_build_from_config_is_seeded_and_counts_steps():
    config = apply_overrides(
        TrainConfig(), ["data.batch_size=64", "grad_accum_steps=3"]
    )
    a, b = build_from_config(config), build_from_config(config)
    assert all(
        torch.equal(x, y)
        for x, y in zip(
            a["model"].state_dict().values(), b["model"].state_dict().values()
        )
    )
    assert steps_per_epoch(config) == math.ceil(math.ceil(1500 / 64) / 3)
    assert steps_per_epoch(config, world_size=2) == math.ceil(math.ceil(750 / 64) / 3)
    assert set(a) == {"model", "optimizer", "scheduler", "criterion", "weights"}
    assert a["weights"] is None  # no init_from


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.experiment_name and config.data.dataset in path.name.replace(
        "mnist5k", "mnist-5k"
    )


def test_config_from_dict_rejects_non_mappings():
    with pytest.raises(ConfigError, match="expected a mapping"):
        config_from_dict(TrainConfig, "num_epochs: 3")
