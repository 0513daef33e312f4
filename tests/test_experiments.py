"""`sweep` and `summarise`: every variant and seed trained as configured, bad input
refused before the first run."""

import math

import pandas as pd
import pytest

from neural_stack.training.run import build_trainer
from neural_stack.experiments import compare, summarise, sweep
from neural_stack.training import (
    ConfigError,
    DataConfig,
    ModelConfig,
    SchedulerConfig,
    TrainConfig,
    apply_overrides,
)
from neural_stack.validation import ArgumentError

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
    scheduler=SchedulerConfig(name="none"),
    data=DataConfig(dataset="digits", batch_size=500),
    num_epochs=1,
    device="cpu",
)
VARIANTS = {
    "learned": [],
    "no position": ["model.positional_embedding=none"],
}


def test_sweep_trains_every_variant_and_seed_as_configured(capsys):
    runs = sweep(TINY, VARIANTS, seeds=[0, 3])
    assert list(runs["variant"]) == ["learned", "learned", "no position", "no position"]
    assert list(runs["seed"]) == [0, 3, 0, 3]
    assert {"val/loss", "val/accuracy", "parameters", "seconds"} <= set(runs.columns)
    # the learned table holds a vector for each of the 4 patches and the class token
    learned, none = runs.groupby("variant")["parameters"].first()[list(VARIANTS)]
    assert learned - none == 5 * 16
    # each row is the run build_trainer makes from the same overrides and seed
    again = build_trainer(
        apply_overrides(TINY, ["model.positional_embedding=none", "seed=3"])
    ).fit()["final"]
    assert runs["val/accuracy"].iloc[3] == again["val/accuracy"]
    assert runs["val/loss"].iloc[3] == again["val/loss"]
    assert runs["val/accuracy"].iloc[0] != runs["val/accuracy"].iloc[2]
    assert len(capsys.readouterr().out.splitlines()) == 4  # a line per run


def test_a_bad_variant_is_refused_before_any_run(capsys):
    bad = {**VARIANTS, "typo": ["model.positional_embeding=none"]}
    with pytest.raises(ConfigError, match="positional_embeding"):
        sweep(TINY, bad, seeds=[0])
    assert capsys.readouterr().out == ""  # nothing trained


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(variants={}), "variants"),
        (dict(variants=["model.dropout=0.1"]), "variants"),
        (dict(seeds=[]), "seeds"),
        (dict(seeds="0"), "seeds"),
        (dict(seeds=[0, -1]), "seeds"),
        (dict(seeds=[1.5]), "seeds"),
    ],
)
def test_bad_sweep_arguments(kwargs, field):
    arguments = {**dict(config=TINY, variants=VARIANTS, seeds=[0]), **kwargs}
    with pytest.raises(ArgumentError, match=rf"^{field}="):
        sweep(**arguments)


def test_summarise_keeps_the_variants_order():
    runs = pd.DataFrame(
        {
            "variant": ["b", "b", "b", "a", "a"],
            "seed": [0, 1, 2, 0, 1],
            "val/accuracy": [0.5, 0.7, 0.9, 0.2, 0.4],
        }
    )
    table = summarise(runs)
    assert list(table.index) == ["b", "a"]
    assert table.loc["b", "mean"] == pytest.approx(0.7)
    assert table.loc["b", "std"] == pytest.approx(0.2)  # the sample deviation
    assert (table.loc["a", "min"], table.loc["a", "max"]) == (0.2, 0.4)
    assert list(table["seeds"]) == [3, 2]
    one = summarise(runs[runs["variant"] == "a"].head(1))
    assert math.isnan(one.loc["a", "std"])  # one seed has no spread
    with pytest.raises(ArgumentError, match=r"metric='val/top5'"):
        summarise(runs, metric="val/top5")


def test_summarise_gives_students_t_interval_of_the_mean():
    runs = pd.DataFrame(
        {"variant": ["b"] * 3 + ["a"] * 2, "seed": [0, 1, 2, 0, 1]}
        | {"val/accuracy": [0.5, 0.7, 0.9, 0.3, 0.3]}
    )
    table = summarise(runs)
    half = 4.302652729911275 * 0.2 / math.sqrt(3)  # t(0.975, 2 df) s / sqrt(n)
    assert table.loc["b", "low"] == pytest.approx(0.7 - half)
    assert table.loc["b", "high"] == pytest.approx(0.7 + half)
    assert (table.loc["a", "low"], table.loc["a", "high"]) == (0.3, 0.3)  # no spread
    narrow = summarise(runs, confidence=0.5).loc["b"]
    assert (
        table.loc["b", "low"] < narrow["low"] < narrow["high"] < table.loc["b", "high"]
    )
    one = summarise(runs.head(1)).loc["b"]
    assert math.isnan(one["low"]) and math.isnan(one["high"])
    with pytest.raises(ArgumentError, match=r"^confidence=1"):
        summarise(runs, confidence=1)


def test_compare_pairs_by_seed_where_the_seeds_are_shared():
    accuracy = [0.80, 0.90, 0.70, 0.83, 0.94, 0.75]  # b = a + 0.03, 0.04, 0.05
    runs = pd.DataFrame(
        {"variant": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2}
        | {"val/accuracy": accuracy}
    )
    d = compare(runs, "b", "a")
    half = 4.302652729911275 * 0.01 / math.sqrt(3)  # the differences: sd 0.01
    assert d.paired and d.seeds == 3 and d.mean == pytest.approx(0.04)
    assert (d.low, d.high) == (pytest.approx(0.04 - half), pytest.approx(0.04 + half))
    assert d.decided and d.verdict == "ahead"
    assert compare(runs, "a", "b").verdict == "behind"
    # unpaired, the seeds' spread (0.1) swamps the same difference: Welch's interval
    unpaired = runs.assign(seed=[0, 1, 2, 3, 4, 5])
    d = compare(unpaired, "b", "a")
    assert not d.paired and d.low < 0 < d.high
    assert d.verdict == "no clear difference at 3 seeds"
    assert str(d).startswith("b - a: +0.040, 95% interval [-")


def test_compare_refuses_unknown_variants_and_single_seeds():
    runs = pd.DataFrame(
        {"variant": ["a", "a", "b"], "seed": [0, 1, 0], "val/accuracy": [0.1, 0.2, 0.3]}
    )
    with pytest.raises(ArgumentError, match=r"^c=0; expected a variant of 2 seeds"):
        compare(runs, "a", "c")
    with pytest.raises(ArgumentError, match=r"^b=1; expected a variant of 2 seeds"):
        compare(runs, "a", "b")
