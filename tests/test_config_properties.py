"""Property tests of the one validation boundary. A small configuration that runs, with
one to four of its fields changed, from a dictionary or from command-line overrides,
is either refused with a one-line `ConfigError` whose first token is the dotted path
of a field, or builds and trains a batch (`dry_run`) without raising anything else and
without writing a file. The fields and their types are read from the dataclasses, so a
new field is covered without a change here.

Profiles: "ci" (the default) runs a fixed set of examples; HYPOTHESIS_PROFILE=explore
draws 2,000 random ones per property."""

import dataclasses
import functools
import math
import os
import re
import sys
import tempfile
import typing
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, event, example, given, note, settings
from hypothesis import strategies as st

from neural_stack.models.positional_embedding import PositionalEmbedding
from neural_stack.training import config as config_module
from neural_stack.training import data as data_module
from neural_stack.training import factory as factory_module
from neural_stack.training.config import (
    MAX_ITEMS,
    MAX_STRING,
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
)
from neural_stack.training.data import DATASETS
from neural_stack.training.factory import MODELS
from neural_stack.training.run import dry_run
from neural_stack.training.trainer import DeviceError

# database=None: no .hypothesis folder is written into the working tree; a failure
# prints its example and the blob that reproduces it.
_COMMON = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow],
}
settings.register_profile("ci", max_examples=100, derandomize=True, **_COMMON)
settings.register_profile("explore", max_examples=2000, **_COMMON)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# --- the fields, read from the dataclasses ------------------------------------------


def field_types(cls: type, prefix: str = "") -> dict[str, typing.Any]:
    "Every field of a configuration dataclass, sections and leaves: {dotted path: type}."
    hints, found = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if f.init:
            found[prefix + f.name] = hints[f.name]
            if dataclasses.is_dataclass(hints[f.name]):
                found.update(field_types(hints[f.name], f"{prefix}{f.name}."))
    return found


FIELDS = field_types(TrainConfig)
# Loader worker processes forked under hypothesis have hung: every case keeps
# data.num_workers=0, so this field is never changed and is set again after each change.
FORCED = {"data.num_workers": 0}
MUTABLE = sorted(path for path in FIELDS if path not in FORCED)

# Sizes that build a model or decide a batch's cost. In-range values stay small; past
# the cap only values so large that the allocation fails at once (far beyond any
# machine's memory) are drawn, never ones a machine could fill its memory with before
# failing: the boundary must refuse those (MAX_PARAMETERS, MAX_LAYERS,
# MAX_RAND_AUG_OPS) before anything is built.
SIZE_CAPS = {
    "model.embed_dim": 32,
    "model.num_heads": 8,
    "model.num_layers": 3,
    "model.mlp_ratio": 8.0,
    "model.patch_size": 16,
    "data.batch_size": 128,
    "data.rand_aug_num_ops": 4,
}
ABSURD_INTS = (2**40, 2**63 - 1, 2**63, 2**64)


def _strings_of(namespace: object) -> set[str]:
    "Every string in the registries and choice tuples of a module or class."
    found = set()
    for name, value in vars(namespace).items():
        if not name.startswith("_") and isinstance(
            value, (tuple, list, set, frozenset, Mapping)
        ):
            found.update(item for item in value if isinstance(item, str))
    return found


# The choices the checks accept, so that string fields also draw values that run;
# none that starts a path outside the test's folder, and no dataset that would
# be downloaded (nothing downloads in tests).
KNOWN_STRINGS = sorted(
    s
    for s in set().union(
        *map(_strings_of, (config_module, factory_module, data_module)),
        PositionalEmbedding.kinds,
        ("auto", "cpu", "cuda", "cuda:0", "cuda:1", "mps"),
    )
    if not s.startswith(("/", "~"))
    if not (s in DATASETS and DATASETS[s].needs_download)
)


# --- values -----------------------------------------------------------------------

EDGE_INTS = (0, 1, -1, 2, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64, -(2**64))
EDGE_FLOATS = (0.0, -0.0, 1.0, 0.5, 0.999999, 1 - 2**-53, 1e-300, 5e-324, -1.0)
EDGE_FLOATS += (1e300, sys.float_info.max, math.inf, -math.inf, math.nan)
TEXT = st.text(st.characters(blacklist_characters="/\x00"), max_size=12)
OTHER = st.one_of(  # a value of any type, for a field of another
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    TEXT,
    st.sampled_from(["1e-3", "nan", "inf", "-1", "0x10", "1_000", "True", "None"]),
    st.lists(st.integers(-1, 3), max_size=3),
    st.dictionaries(st.sampled_from(["a", "name", "lr"]), st.integers(), max_size=2),
)


def _items(kind: typing.Any) -> tuple:
    "The item types of a tuple annotation, one for `tuple[X, ...]`."
    args = typing.get_args(kind)
    return args[:1] if args[-1] is Ellipsis else args


def _options(kind: typing.Any) -> tuple:
    "The types of a union annotation, or the annotation alone."
    union = typing.get_origin(kind) in (typing.Union, type(int | None))
    return typing.get_args(kind) if union else (kind,)


def in_range(kind: typing.Any, path: str) -> st.SearchStrategy:
    "Values of the annotated type `kind` that are likely to run."
    if len(_options(kind)) > 1:
        return st.one_of(*(in_range(option, path) for option in _options(kind)))
    cap = SIZE_CAPS.get(path)
    if dataclasses.is_dataclass(kind):  # a section of defaults
        return st.just({})
    if kind is type(None):
        return st.none()
    if kind is bool:
        return st.booleans()
    if kind is int:
        return st.integers(1, int(cap)) if cap else st.integers(0, 8)
    if kind is float:
        return st.floats(0.125, cap) if cap else st.floats(0.0, 1.0, exclude_max=True)
    if kind is str:
        return st.sampled_from(KNOWN_STRINGS)
    if typing.get_origin(kind) is tuple:
        items = [in_range(item, f"{path}[]") for item in _items(kind)]
        if typing.get_args(kind)[-1] is Ellipsis:
            return st.lists(items[0], min_size=1, max_size=3)
        return st.tuples(*items).map(list)
    raise NotImplementedError(f"no values for {path}: {kind!r}; add a case here")


def extreme(kind: typing.Any, path: str) -> st.SearchStrategy:
    "Values of the annotated type `kind` at its edges and past them."
    if len(_options(kind)) > 1:
        return st.one_of(*(extreme(option, path) for option in _options(kind)))
    cap = SIZE_CAPS.get(path)
    if dataclasses.is_dataclass(kind):  # a section with a key it lacks
        near = [f.name + "s" for f in dataclasses.fields(kind)]
        keys = st.one_of(st.sampled_from(near), TEXT.filter(bool))
        return st.dictionaries(keys, OTHER, min_size=1, max_size=1)
    if kind in (bool, type(None)):
        return in_range(kind, path)
    if kind is int and cap:
        past = (0, -1, -(2**64)) + ABSURD_INTS
        return st.one_of(st.integers(-2, int(cap)), st.sampled_from(past))
    if kind is int:
        return st.one_of(st.integers(-3, 100), st.sampled_from(EDGE_INTS))
    if kind is float and cap:
        past = (0.0, 1e-300, -math.inf, math.nan, 1e12, 1e300, math.inf)
        return st.one_of(st.floats(-1.0, cap), st.sampled_from(past))
    if kind is float:
        return st.one_of(
            st.floats(-2.0, 2.0),
            st.sampled_from(EDGE_FLOATS),
            st.integers(-2, 3),
            st.sampled_from((2**64, "2e-3", "1e999")),  # numbers as YAML 1.1 reads them
        )
    if kind is str:
        strange = ["", " ", "a\nb", "x" * (MAX_STRING + 1), "VIT", " vit"]
        return st.one_of(TEXT, st.sampled_from(strange))
    if typing.get_origin(kind) is tuple:
        items = st.one_of(*(extreme(item, f"{path}[]") for item in _items(kind)))
        return st.one_of(
            st.lists(items, max_size=4),  # of any length, items past their range
            st.just([0.5] * (MAX_ITEMS + 1)),
        )
    raise NotImplementedError(f"no values for {path}: {kind!r}; add a case here")


def _candidates(kind: typing.Any) -> list:
    "Plain values of the annotated type `kind` to try one at a time."
    kinds = set(_options(kind))
    found = [None] * (type(None) in kinds) + [False, True] * (bool in kinds)
    found += KNOWN_STRINGS * (str in kinds)
    found += [0, 1, 2, 3, 4, 8, 16, 32, 64] * (int in kinds)
    found += [0.0, 1e-4, 0.1, 0.5, 0.9, 1.0, 2.0, 10.0] * (float in kinds)
    if any(typing.get_origin(k) is tuple for k in kinds):
        found += [[s] for s in KNOWN_STRINGS] + [[0.5], [0.5, 0.5], [0.1, 0.9]]
    return found


@functools.cache
def accepted(model: str, path: str) -> list:
    """The candidates the base configuration of `model` accepts at `path` alone: the
    choices a string field takes, the sizes that fit digits, so that changed fields
    often run rather than always being refused."""
    found, cap = [], SIZE_CAPS.get(path, math.inf)
    for value in _candidates(FIELDS[path]):
        if isinstance(value, (int, float)) and value > cap:
            continue
        try:
            data = with_changes(base_dict(model, Path("unused")), {path: value})
            config_from_dict(TrainConfig, data)
        except ConfigError:
            continue
        found.append(value)
    return found


def values(model: str, path: str) -> st.SearchStrategy:
    """Values for the field at `path` of a run of `model`: mostly ones accepted alone,
    the rest in its type's range, at its edges and past them, or of another type."""
    kind = FIELDS[path]
    plain, edge = in_range(kind, path), extreme(kind, path)
    likely = st.sampled_from(accepted(model, path)) if accepted(model, path) else plain
    return st.one_of(*[likely] * 6, plain, edge, edge, OTHER)


@st.composite
def cases(draw, raw_yaml: bool = False) -> tuple[str, dict[str, object]]:
    "A registered model and 1 to 4 changed fields {path: value}, no section with its field."
    model = draw(st.sampled_from(sorted(MODELS)))
    paths = draw(
        st.lists(st.sampled_from(MUTABLE), min_size=1, max_size=4, unique=True)
    )
    paths = [p for p in paths if not any(p.startswith(q + ".") for q in paths)]
    raw = [st.sampled_from(RAW_YAML).map(RawYAML)] if raw_yaml else []
    return model, {
        path: draw(st.one_of(*[values(model, path)] * 7, *raw)) for path in paths
    }


# --- the base configuration -------------------------------------------------------

TINY = {"img_size": 8, "in_channels": 1, "num_classes": 10, "patch_size": 4}
TINY |= {"embed_dim": 8, "num_heads": 2, "num_layers": 1, "mlp_ratio": 2.0}
# A Swin's default four stages need a grid of 8 x 8 patches or more: one stage here.
OWN = {"swin": {"depths": [1], "window_size": 2}, "mae": {"decoder_dim": 8}}


def base_dict(model: str, root: Path) -> dict:
    """A run of `model` on digits that dry-runs in milliseconds: tiny widths, 75
    training images, one epoch, every file under `root`. Colour jitter without
    saturation and hue, so that turning it on alone runs on grey images."""
    return {
        "num_epochs": 1,
        "device": "cpu",
        "checkpoint_dir": str(root / "run" / "checkpoints"),
        "model": {"name": model, **TINY, **OWN.get(model, {})},
        # a model that learns without labels has no accuracy to monitor
        "monitor": "val/accuracy" if MODELS[model].labels else "val/loss",
        "data": {
            "dataset": "digits",
            "data_dir": str(root / "data"),
            "batch_size": 16,
            "train_fraction": 0.05,
            "jit_saturation": 0.0,
            "jit_hue": 0.0,
            **{path.split(".")[1]: value for path, value in FORCED.items()},
        },
    }


def with_changes(data: dict, changes: dict[str, object]) -> dict:
    "`data` with each {dotted path: value} set, then the forced fields set again."
    for path, value in [*changes.items(), *FORCED.items()]:
        *parents, leaf = path.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[leaf] = value
    return data


class RawYAML(str):
    "An override's value written as it stands, not dumped from a Python value."


RAW_YAML = [
    "",
    "~",
    "[1, 2",
    "{a: 1",
    "'open",
    "a: b: c",
    "@",
    "yes",
    "off",
    ".NaN",
    "-.inf",
    "0x1F",
    "0o17",
    "1_000",
    "2e-3",
    "1:30",
    "2001-12-14",
    "[*a]",
    "&a [*a]",
    "{[1]: 2}",
    "{a: 1, a: 2}",
    "!!python/object/apply:os.system ['true']",
    "!!binary aGk=",
    "!!set {a}",
    "- 1\n- 2",
    "[" * 2000 + "]" * 2000,
    "--- 1\n--- 2",
]


def yaml_text(value: object) -> str:
    "`value` as the text after `=` in an override."
    if isinstance(value, RawYAML):
        return str(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf)
    return text.removesuffix("\n").removesuffix("\n...")


# --- the property -----------------------------------------------------------------


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
    }


@contextmanager
def sandbox():
    """A fresh folder with `cwd` (the working directory meanwhile), `run` and `data`
    in it; on leaving, nothing in it may have changed, no child process may be left
    (no loader workers), and PyTorch's thread count must be as it was."""
    with tempfile.TemporaryDirectory(prefix="config-properties-") as name:
        root, cwd = Path(name), os.getcwd()
        for sub in ("cwd", "run", "data"):
            (root / sub).mkdir()
        before, threads = _files(root), torch.get_num_threads()
        os.chdir(root / "cwd")
        try:
            yield root
        finally:
            os.chdir(cwd)
        assert _files(root) == before, "a check or a dry run wrote a file"
        assert psutil.Process().children(recursive=True) == []
        assert torch.get_num_threads() == threads


DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(\[\d+\])*")


def assert_one_line_naming_a_field(error: ConfigError, changes: dict) -> None:
    "The message is one line, and its first token is the path of a field or section."
    message = str(error)
    assert "\n" not in message and "\r" not in message, message
    token = re.split(r"[=:\s]", message, maxsplit=1)[0]
    assert DOTTED.fullmatch(token), message
    assert error.path.startswith(token), (error.path, message)
    field = re.sub(r"(\[\d+\])+$", "", token)
    section = field.rsplit(".", 1)[0] if "." in field else field
    known = field in FIELDS or (section in FIELDS and field in changes_keys(changes))
    assert known, f"{field!r} is no field of TrainConfig: {message}"


def changes_keys(changes: dict) -> set[str]:
    "The dotted paths of the keys a case writes, unknown keys in a section included."
    keys = set(changes)
    for path, value in changes.items():
        if dataclasses.is_dataclass(FIELDS.get(path)) and isinstance(value, dict):
            keys.update(f"{path}.{key}" for key in value)
    return keys


def check_boundary(build: typing.Callable[[Path], TrainConfig], changes: dict) -> None:
    "Refused with a ConfigError that names a field, or dry-run; nothing else, no file."
    with sandbox() as root:
        try:
            config = build(root)
        except ConfigError as e:
            event(f"refused: {e.path.split('.')[0].split(':')[0]}")
            assert_one_line_naming_a_field(e, changes)
            return
        assume(not DATASETS[config.data.dataset].needs_download)  # no downloads
        assert config.data.num_workers == 0
        try:
            result = dry_run(config)
        except ConfigError as e:  # found only when building: still the boundary's
            event(f"refused by dry_run: {e.path}")
            assert_one_line_naming_a_field(e, changes)
            return
        except DeviceError as e:  # a valid device (or precision) this machine lacks
            event("refused: a device this machine lacks")
            assert "\n" not in str(e) and re.match(r"(device|amp_dtype)=", str(e))
            assert "device='auto'" in str(e) or "bfloat16" in str(e), str(e)
            return
        event(f"ran {config.model.name}")
        note(f"dry run: {result}")
        assert result["parameters"] > 0 and result["batch"][0] >= 1
        # the first loss comes before any update: only inputs the configuration made
        # non-finite (a mean or std beyond float32) can make it NaN
        assert math.isfinite(result["loss"]), result


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_base_config_runs(model):
    with sandbox() as root:
        result = dry_run(config_from_dict(TrainConfig, base_dict(model, root)))
    assert result["device"] == "cpu" and result["batch"] == (16, 1, 8, 8)
    assert math.isfinite(result["loss"])


# Cases that once failed, kept so that every run tries them, each with what it found.
REGRESSIONS = [
    # batch norm on a batch of one image: "Expected more than 1 value per channel"
    ("resnet18", {"data.batch_size": 1}),
    # round(inf) in the warm-up check: OverflowError
    ("cnn", {"scheduler.warmup_epochs": sys.float_info.max}),
    # the size check builds on the meta device, where torch's sizes overflowed first
    ("vit", {"model.embed_dim": 2**40}),
    ("vit", {"model.mlp_ratio": 1e300}),
    # a std that is 0 in float32 and a mean that is inf in float32: a NaN loss
    ("vit", {"data.mean": [0.5], "data.std": [1e-300]}),
    ("vit", {"data.mean": [1e300], "data.std": [0.5]}),
    # an unknown key written as it came: a line break in the message, no dotted path
    ("vit", {"data": {"a\nb": 1}}),
    # a masked autoencoder's normalised target on one-pixel patches: a NaN variance
    ("mae", {"model.patch_size": 1}),
    # a million RandAugment operations per image: a run that never ends
    ("cnn", {"data.rand_aug": True, "data.rand_aug_num_ops": 10**6}),
    # a device this machine lacks: a one-line DeviceError naming device='auto'
    ("vit", {"device": "cuda:1"}),
    ("vit", {"use_amp": True, "amp_dtype": "float16"}),
]


def with_examples(cases: list) -> typing.Callable:
    "Decorate a property with `@example(case=...)` for each of `cases`."

    def decorate(test: typing.Callable) -> typing.Callable:
        for case in reversed(cases):
            test = example(case=case)(test)
        return test

    return decorate


@PROFILE
@with_examples(REGRESSIONS)
@given(case=cases())
def test_config_from_dict_refuses_or_runs(case):
    model, changes = case
    check_boundary(
        lambda root: config_from_dict(
            TrainConfig, with_changes(base_dict(model, root), changes)
        ),
        changes,
    )


@PROFILE
@with_examples(
    # a YAML key that is a list: TypeError "unhashable type: 'list'" in the loader
    [("vit", {"amp_dtype": RawYAML("{[1]: 2}")})] + REGRESSIONS
)
@given(case=cases(raw_yaml=True))
def test_overrides_refuse_or_run(case):
    model, changes = case
    assignments = [f"{path}={yaml_text(value)}" for path, value in changes.items()]
    assignments += [f"{path}={yaml_text(value)}" for path, value in FORCED.items()]
    note(f"overrides: {assignments}")
    check_boundary(
        lambda root: apply_overrides(
            config_from_dict(TrainConfig, base_dict(model, root)), assignments
        ),
        changes,
    )
