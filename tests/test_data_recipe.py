"""DeiT's data recipe in neural_stack.training.data: RandAugment on the paper's and
timm's 0-to-10 scale, a resize to `img_size`, random erasing on normalised training
images, and MixUp / CutMix on whole training batches with probability targets, drawn
reproducibly from the run's seed."""

import dataclasses
import math
import os
import subprocess
import sys

import pytest
import torch
from torchvision.transforms import v2

from neural_stack.training import data
from neural_stack.training.data import (
    DataConfig,
    build_augmentation,
    build_dataloaders,
    PortableResize,
    image_size,
)
from neural_stack.validation import ArgumentError

MIX = dict(mixup_alpha=0.8, cutmix_alpha=1.0)

BAD = [
    (dict(rand_aug_magnitude=11), "rand_aug_magnitude", "an integer from 0 to 10"),
    (dict(rand_aug_magnitude=27), "rand_aug_magnitude", "an integer from 0 to 10"),
    (dict(rand_aug_magnitude=-1), "rand_aug_magnitude", "an integer from 0 to 10"),
    (dict(rand_aug_magnitude=9.0), "rand_aug_magnitude", "an integer from 0 to 10"),
    (dict(rand_aug_magnitude=True), "rand_aug_magnitude", "an integer from 0 to 10"),
    (dict(img_size=0), "img_size", "an integer from 1 to 1024"),
    (dict(img_size=1025), "img_size", "an integer from 1 to 1024"),
    (dict(img_size=32.0), "img_size", "an integer from 1 to 1024"),
    (dict(img_size="32"), "img_size", "an integer from 1 to 1024"),
    (dict(img_size=[32, 32]), "img_size", "an integer from 1 to 1024"),
    (dict(random_erasing=-0.1), "random_erasing", ">= 0"),
    (dict(random_erasing=1.5), "random_erasing", "a number from 0 to 1"),
    (dict(random_erasing=math.nan), "random_erasing", ">= 0"),
    (dict(random_erasing=True), "random_erasing", ">= 0"),
    (dict(mixup_alpha=-0.5), "mixup_alpha", ">= 0"),
    (dict(mixup_alpha=1e-300), "mixup_alpha", "0 (off) or a number from 0.01 to 100"),
    (dict(mixup_alpha=1e3), "mixup_alpha", "0 (off) or a number from 0.01 to 100"),
    (dict(mixup_alpha=math.inf), "mixup_alpha", ">= 0"),
    (dict(cutmix_alpha=0.001), "cutmix_alpha", "0 (off) or a number from 0.01 to 100"),
    (dict(cutmix_alpha="1.0"), "cutmix_alpha", ">= 0"),
    (dict(mix_prob=1.01), "mix_prob", "a number from 0 to 1"),
    (dict(mix_prob=-0.0001), "mix_prob", ">= 0"),
    (dict(mix_prob=None), "mix_prob", ">= 0"),
    (dict(mix_switch_prob=2), "mix_switch_prob", "a number from 0 to 1"),
    (dict(mix_switch_prob=math.inf), "mix_switch_prob", ">= 0"),
]


@pytest.mark.parametrize("kwargs, field, allowed", BAD, ids=[f"{k}" for k, _, _ in BAD])
def test_bad_values_are_refused_naming_field_value_and_allowed(kwargs, field, allowed):
    with pytest.raises(ArgumentError) as e:
        DataConfig(**kwargs)
    value = kwargs[field]
    assert e.value.field == field
    assert e.value.value is value or e.value.value == value
    assert allowed in e.value.allowed
    config = DataConfig()  # a changed config is refused again by validate()
    setattr(config, field, value)
    with pytest.raises(ArgumentError, match=f"^{field}="):
        config.validate()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(rand_aug_magnitude=0),
        dict(rand_aug_magnitude=10),
        dict(img_size=1),
        dict(img_size=1024),
        dict(random_erasing=0.0),
        dict(random_erasing=1),
        dict(mixup_alpha=0.01, cutmix_alpha=100),
        dict(mixup_alpha=1, mix_prob=0, mix_switch_prob=1),
    ],
)
def test_edge_values_are_accepted(kwargs):
    DataConfig(**kwargs)


def test_new_fields_default_to_the_recipe_being_off():
    config = DataConfig()
    assert config.img_size is None and config.random_erasing == 0
    assert config.mixup_alpha == config.cutmix_alpha == 0
    assert (config.mix_prob, config.mix_switch_prob) == (1.0, 0.5)
    assert config.rand_aug_magnitude == 9  # DeiT's m9


def test_image_size_is_img_size_or_the_datasets_own():
    assert image_size(DataConfig()) == 8
    assert image_size(DataConfig(dataset="mnist-5k")) == 28
    assert image_size(DataConfig(dataset="cifar10", img_size=224)) == 224
    assert image_size(DataConfig(img_size=8)) == 8


@pytest.mark.parametrize("crop", [False, True])
def test_resize_gives_both_splits_img_size(crop):
    config = DataConfig(img_size=20, random_crop=crop, rand_aug=True, batch_size=16)
    train, val = build_dataloaders(config, seed=0)
    (x, y), (vx, vy) = next(iter(train)), next(iter(val))
    assert x.shape == (16, 1, 20, 20) and vx.shape == (16, 1, 20, 20)
    assert y.dtype == vy.dtype == torch.int64
    stored = val.dataset.images[:16]  # validation: the stored images, resized, scaled
    resized = PortableResize(20)(stored)
    mean, std = data.DATASET_STATS["digits"]
    expected = (resized.float() / 255 - mean[0]) / std[0]
    assert torch.allclose(vx, expected, atol=1e-5)
    assert not torch.allclose(resized.float()[:, :, :8, :8], stored.float())


def test_portable_resize_is_bilinear_with_antialiasing_rounded_half_up():
    images = data._load("digits", "data")[0][0][:64]
    exact = v2.functional.resize(images.double(), [28, 28], antialias=True)
    ours = PortableResize(28)(images)
    assert ours.dtype == torch.uint8 and ours.shape == (64, 1, 28, 28)
    assert (ours.double() - exact).abs().max() <= 0.5 + 1e-6
    theirs = v2.Resize(28, antialias=True)(images)  # torch's uint8 kernels
    assert (ours.int() - theirs.int()).abs().max() <= 1
    halves = torch.tensor([[[[10, 11], [10, 11]]], [[[12, 13], [12, 13]]]])
    # 10.5 and 12.5 both round up (half to even would give 10 and 12)
    assert PortableResize(1)(halves.to(torch.uint8)).flatten().tolist() == [11, 13]
    down = PortableResize(14)(data._load("mnist-5k", "data")[0][0][:8])
    assert down.shape == (8, 1, 14, 14)


def test_portable_resize_gives_the_same_pixels_under_both_cpu_kernels():
    script = (
        "import hashlib, torch\n"
        "from neural_stack.training.data import PortableResize, _load\n"
        "digits, mnist = (_load(n, 'data')[0][0][:300] for n in ('digits', 'mnist-5k'))\n"
        "sizes = [(digits, s) for s in (4, 6, 16, 24, 28, 32, 224)]\n"
        "sizes += [(mnist, s) for s in (7, 14, 20, 32, 56)]\n"
        "for images, s in sizes:\n"
        "    pixels = PortableResize(s)(images).numpy().tobytes()\n"
        "    print(s, hashlib.sha256(pixels).hexdigest())\n"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", script],
            env=os.environ | profile,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for profile in ({}, {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"})
    ]
    assert runs[0].count("\n") == 12 and runs[0] == runs[1]


def test_portable_resize_refuses_what_it_cannot_resize():
    with pytest.raises(ArgumentError, match="size=0; expected an integer from 1"):
        PortableResize(0)
    with pytest.raises(ArgumentError, match="images.dtype=torch.float32; expected"):
        PortableResize(4)(torch.zeros(1, 8, 8))


def test_img_size_equal_to_the_datasets_own_changes_no_batch():
    plain = next(iter(build_dataloaders(DataConfig(random_crop=True), seed=2)[0]))
    same = DataConfig(random_crop=True, img_size=8)
    sized = next(iter(build_dataloaders(same, seed=2)[0]))
    assert torch.equal(plain[0], sized[0]) and torch.equal(plain[1], sized[1])


def _first(config: DataConfig, seed: int = 0, n: int = 2) -> list:
    batches = iter(build_dataloaders(config, seed)[0])
    return [next(batches) for _ in range(n)]


def _same(a: list, b: list) -> bool:
    return all(
        torch.equal(x, u) and torch.equal(y, v) and y.dtype == v.dtype
        for (x, y), (u, v) in zip(a, b)
    )


@pytest.mark.parametrize("mix", [dict(mixup_alpha=0.8), dict(cutmix_alpha=1.0), MIX])
def test_mixed_targets_are_probabilities_over_the_classes(mix):
    config = DataConfig(dataset="mnist-5k", batch_size=32, **mix)
    (x, y), (plain_x, labels) = (
        _first(config, n=1)[0],
        _first(DataConfig(dataset="mnist-5k", batch_size=32), n=1)[0],
    )
    assert x.shape == plain_x.shape and y.shape == (32, 10)
    assert y.dtype == torch.float32 and bool((y >= 0).all())
    assert torch.allclose(y.sum(1), torch.ones(32), atol=1e-6)
    # each target weighs the sample's own label and its neighbour's (v2 pairs i, i - 1)
    own, other = y[torch.arange(32), labels], y[torch.arange(32), labels.roll(1)]
    differ = labels != labels.roll(1)
    assert torch.allclose((own + other)[differ], torch.ones(int(differ.sum())))
    assert bool((own[differ] < 1).all())  # a mixed batch, not left unmixed


def test_mixup_pixels_mix_with_the_targets_weight():
    plain_config = DataConfig(dataset="mnist-5k", batch_size=32, random_crop=True)
    mixed_config = dataclasses.replace(plain_config, mixup_alpha=0.8)
    (plain, labels), (mixed, y) = (
        _first(plain_config, n=1)[0],
        _first(mixed_config, n=1)[0],
    )
    i = int((labels != labels.roll(1)).nonzero()[0])
    lam = float(y[i, labels[i]])
    expected = lam * plain + (1 - lam) * plain.roll(1, 0)
    assert torch.allclose(mixed, expected, atol=1e-5)


def test_cutmix_target_weight_is_the_unboxed_share_of_pixels():
    config = DataConfig(cutmix_alpha=1.0)
    collate = build_dataloaders(config)[0].collate_fn
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        images = torch.rand(8, 3, 16, 20, generator=gen)  # every pixel differs
        labels = torch.arange(8) % 10
        samples = [(images[i], labels[i], 1000 * seed + i) for i in range(8)]
        mixed, y = collate(samples)
        box = (mixed != images).any(0).any(0)  # [H, W], the same for every sample
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        if len(rows):  # the box is a rectangle, filled with the neighbour's pixels
            assert int(box.sum()) == len(rows) * len(cols)
            assert torch.equal(mixed[..., box], images.roll(1, 0)[..., box])
        kept = 1 - box.float().mean()
        assert torch.allclose(y[torch.arange(8), labels], kept.expand(8), atol=1e-6)


def test_mixing_off_keeps_int64_labels():
    for config in (DataConfig(), DataConfig(mix_prob=0.5, mix_switch_prob=1.0)):
        ((_, y),) = _first(config, n=1)
        assert y.dtype == torch.int64 and y.shape == (64,)


def test_mix_prob_zero_leaves_images_and_one_hot_targets():
    plain = _first(DataConfig(random_horizontal_flip=True), n=2)
    never = _first(DataConfig(random_horizontal_flip=True, mix_prob=0, **MIX), n=2)
    for (x, labels), (u, y) in zip(plain, never):
        assert torch.equal(x, u)
        assert torch.equal(y, torch.nn.functional.one_hot(labels, 10).float())


def test_mix_prob_mixes_about_that_share_of_batches():
    config = DataConfig(
        dataset="mnist-5k", batch_size=16, mixup_alpha=1.0, mix_prob=0.5
    )
    loader = build_dataloaders(config, seed=1)[0]
    mixed = [bool(((y > 0) & (y < 1)).any()) for _, y in loader]  # 250 batches
    assert 0.35 < sum(mixed) / len(mixed) < 0.65


def test_mix_switch_prob_picks_cutmix_or_mixup():
    def kinds(switch: float) -> set:
        config = DataConfig(
            dataset="mnist-5k", batch_size=16, mix_switch_prob=switch, **MIX
        )
        plain = DataConfig(dataset="mnist-5k", batch_size=16)
        found = set()
        for (x, _), (p, _) in zip(_first(config, n=8), _first(plain, n=8)):
            # CutMix copies pixels, own or the neighbour's; MixUp blends them
            copied = bool(((x == p) | (x == p.roll(1, 0))).all())
            found.add("cutmix" if copied else "mixup")
        return found

    assert kinds(0.0) == {"mixup"} and kinds(1.0) == {"cutmix"}


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_mixed_batches_with_and_without_workers(workers):
    config = DataConfig(
        random_crop=True, rand_aug=True, random_erasing=0.5, mix_prob=0.7, **MIX
    )
    reference = _first(config, seed=5, n=3)
    again = _first(dataclasses.replace(config, num_workers=workers), seed=5, n=3)
    assert _same(reference, again)
    assert not _same(reference, _first(config, seed=6, n=3))


def test_mixing_leaves_torchs_global_generator_alone():
    state = torch.get_rng_state()
    _first(DataConfig(random_erasing=0.5, **MIX), n=3)
    assert torch.equal(state, torch.get_rng_state())


def test_a_resumed_epoch_mixes_as_the_uninterrupted_one():
    config = DataConfig(mixup_alpha=0.4, cutmix_alpha=0.4, random_erasing=0.5)
    loader = build_dataloaders(config, seed=3)[0]
    list(loader)  # epoch 1
    saved = loader.generator.get_state()  # what the trainer stores at an epoch's end
    epoch2 = list(loader)
    resumed = build_dataloaders(config, seed=3)[0]
    resumed.generator.set_state(saved)
    torch.manual_seed(12345)  # the global generator is no part of the batches
    assert _same(epoch2, list(resumed))


def test_validation_is_never_mixed_resized_alike_or_erased():
    plain_val = build_dataloaders(DataConfig(), seed=0)[1]
    recipe = DataConfig(random_erasing=1.0, rand_aug=True, **MIX)
    recipe_val = build_dataloaders(recipe, seed=0)[1]
    for (x, y), (u, v) in zip(plain_val, recipe_val):
        assert torch.equal(x, u) and torch.equal(y, v) and v.dtype == torch.int64


def test_random_erasing_only_on_training_images_and_in_normalised_space():
    plain = _first(DataConfig(batch_size=32, dataset="mnist-5k"), n=1)[0][0]
    erased = _first(
        DataConfig(batch_size=32, dataset="mnist-5k", random_erasing=1.0), n=1
    )[0][0]
    changed = (plain != erased).flatten(1)
    assert bool(changed.any(1).all())  # p = 1: every training image has a box erased
    values = erased[plain != erased]  # random values: N(0, 1) in normalised units
    assert abs(values.mean().item()) < 0.1 and 0.9 < values.std().item() < 1.1
    assert bool((changed.float().mean(1) <= 1 / 3 + 1e-6).all())  # scale (0.02, 0.33)
    none = _first(
        DataConfig(batch_size=32, dataset="mnist-5k", random_erasing=0.0), n=1
    )
    assert torch.equal(none[0][0], plain)


def _rotation_measured(magnitude: int) -> list[float]:
    "Angles by which RandAugment's Rotate op, as configured, turns a bright spot."
    config = DataConfig(rand_aug=True, rand_aug_num_ops=1, rand_aug_magnitude=magnitude)
    (rand_aug,) = build_augmentation(config).transforms
    # torchvision's own Rotate entry, the only op: the range is torchvision's, not ours
    rand_aug._AUGMENTATION_SPACE = {
        "Rotate": v2.RandAugment._AUGMENTATION_SPACE["Rotate"]
    }
    image = torch.zeros(1, 65, 65, dtype=torch.uint8)
    image[0, 30:35, 52:57] = 255  # a spot 22 pixels right of the centre (32, 32)
    angles = []
    for seed in range(6):
        torch.manual_seed(seed)
        turned = rand_aug(image)[0].float()
        ys, xs = torch.meshgrid(torch.arange(65.0), torch.arange(65.0), indexing="ij")
        w = turned / turned.sum()
        dy, dx = float((w * ys).sum()) - 32, float((w * xs).sum()) - 32
        angles.append(math.degrees(math.atan2(-dy, dx)))  # counter-clockwise positive
    return angles


@pytest.mark.parametrize("magnitude, degrees", [(10, 30.0), (9, 27.0), (3, 9.0)])
def test_rand_aug_magnitude_is_on_timms_scale(magnitude, degrees):
    angles = _rotation_measured(magnitude)
    assert all(abs(abs(a) - degrees) < 1.0 for a in angles), angles
    assert min(angles) < 0 < max(angles)  # either way
