"""`batch_augment`: the crop and flip of a whole batch in one resampling
(`batch_random_crop`, its boxes from `random_crop_boxes`), torchvision's crop of the same
boxes, loaders that normalise stacked batches, and what they keep of the
per-image path: the same validation batches, the same batches for the same seed in any
number of worker processes, and the global random state untouched."""

import dataclasses
import math

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from neural_stack.training.data import (
    DataConfig,
    batch_random_crop,
    build_dataloaders,
    random_crop_boxes,
)
from neural_stack.validation import ArgumentError

CROP = dict(random_crop=True, crop_scale=(0.5, 1.0), crop_ratio=(0.75, 4 / 3))


def ramps(batch: int, size: int) -> torch.Tensor:
    "Images whose first channel is each pixel's column and second its row."
    rows, cols = torch.meshgrid(
        torch.arange(size, dtype=torch.float32),
        torch.arange(size, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([cols, rows]).expand(batch, 2, size, size).clone()


def test_the_whole_image_unflipped_is_the_image():
    images = torch.randn(6, 3, 12, 12)
    out = batch_random_crop(images, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert (out - images).abs().max() < 1e-5


@pytest.mark.parametrize(
    "scale, ratio, width, height",
    [((0.25, 0.25), (1.0, 1.0), 0.5, 0.5), ((0.5, 0.5), (2.0, 2.0), 1.0, 0.5)],
)
def test_each_box_has_the_drawn_area_and_ratio(scale, ratio, width, height):
    # bilinear resampling of a linear ramp is exact: one output pixel steps through
    # the box's width (height) share of an input pixel, wherever the box lies
    out = batch_random_crop(
        ramps(64, 28), scale, ratio, generator=torch.Generator().manual_seed(0)
    )
    inner = out[:, :, 2:-2, 2:-2]
    assert torch.allclose(inner[:, 0].diff(dim=-1), torch.tensor(width), atol=1e-4)
    assert torch.allclose(inner[:, 1].diff(dim=-2), torch.tensor(height), atol=1e-4)
    lefts = out[:, 0, 14, 0]  # where the boxes start: spread over the free room
    assert lefts.min() >= -0.5 and lefts.max() <= 28 * (1 - width)
    if width < 1:
        assert lefts.std() > 28 * (1 - width) / 6


def test_a_box_that_never_fits_falls_back_to_the_whole_image_at_the_ratio():
    # as torchvision's: ten boxes of the whole area at ratio 2 are too wide, so the
    # box is the whole image cut to ratio 2, its full width and half its height
    out = batch_random_crop(ramps(16, 20), scale=(1.0, 1.0), ratio=(2.0, 2.0))
    assert torch.allclose(out[:, 0].diff(dim=-1), torch.tensor(1.0), atol=1e-4)
    assert torch.allclose(out[:, 1, 2:-2].diff(dim=-2), torch.tensor(0.5), atol=1e-4)


def test_flip_mirrors_about_half_the_images():
    images = torch.randn(400, 1, 10, 10)
    out = batch_random_crop(
        images, (1.0, 1.0), (1.0, 1.0), flip=True, generator=torch.Generator()
    )
    kept = (out - images).abs().flatten(1).amax(1) < 1e-5
    mirrored = (out - images.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert (kept ^ mirrored).all()
    assert 0.4 < mirrored.float().mean() < 0.6


@pytest.mark.parametrize(
    "size, scale, ratio",
    [((28, 28), (0.08, 1.0), (3 / 4, 4 / 3)), ((9, 31), (0.02, 0.6), (0.2, 5.0))],
)
def test_boxes_are_whole_pixels_inside_the_image(size, scale, ratio):
    boxes = random_crop_boxes(
        size, 2000, scale, ratio, torch.Generator().manual_seed(1)
    )
    top, left, height, width = boxes.T
    assert boxes.dtype == torch.int64 and (height >= 1).all() and (width >= 1).all()
    assert (top >= 0).all() and (top + height <= size[0]).all()
    assert (left >= 0).all() and (left + width <= size[1]).all()
    assert (width / height).log().std() > 0.05  # ratios differ from box to box
    free = size[1] - width
    assert (left[free > 0] / free[free > 0]).mean().sub(0.5).abs() < 0.05  # uniform


def test_the_batch_crop_is_torchvisions_crop_of_the_same_boxes():
    images = torch.rand(64, 3, 20, 24)
    scale, ratio = (0.1, 0.9), (0.5, 2.0)
    out = batch_random_crop(
        images, scale, ratio, True, torch.Generator().manual_seed(2)
    )
    draws = torch.Generator().manual_seed(2)  # the same draws: the boxes, the mirrors
    boxes = random_crop_boxes((20, 24), 64, scale, ratio, draws)
    mirrored = torch.rand(64, generator=draws) < 0.5
    assert 0 < mirrored.sum() < 64
    for image, box, mirror, ours in zip(images, boxes.tolist(), mirrored, out):
        theirs = F.resized_crop(image, *box, [20, 24], antialias=True)
        theirs = F.horizontal_flip(theirs) if mirror else theirs
        assert (ours - theirs).abs().max() < 1e-5


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(size=(0, 4)), "size"),
        (dict(size=(4.0, 4)), "size"),
        (dict(size=(4,)), "size"),
        (dict(count=-1), "count"),
        (dict(scale=(0.0, 1.0)), "scale"),
        (dict(ratio=(1.0, float("inf"))), "ratio"),
    ],
)
def test_bad_box_arguments_are_named(kwargs, field):
    with pytest.raises(ArgumentError, match=f"^{field}="):
        random_crop_boxes(**{"size": (4, 4), "count": 2, **kwargs})


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(images=torch.zeros(2, 3, 4, 4, dtype=torch.uint8)), "images"),
        (dict(images=torch.zeros(3, 4, 4)), "images"),
        (dict(images=torch.zeros(2, 1, 4, 4), scale=(0.5, 1.5)), "scale"),
        (dict(images=torch.zeros(2, 1, 4, 4), ratio=(2.0, 1.0)), "ratio"),
    ],
)
def test_bad_arguments_are_named(kwargs, field):
    with pytest.raises(ArgumentError, match=f"^{field}="):
        batch_random_crop(**kwargs)


def test_the_field_is_checked():
    with pytest.raises(ArgumentError, match="^batch_augment='yes'"):
        DataConfig(batch_augment="yes")


def batches(config: DataConfig, seed: int = 0, count: int = 3) -> list:
    loader = iter(build_dataloaders(config, seed)[0])
    return [next(loader) for _ in range(count)]


def equal(a: list, b: list) -> bool:
    return all(torch.equal(x, y) and torch.equal(u, w) for (x, u), (y, w) in zip(a, b))


def test_validation_batches_are_the_per_image_paths():
    config = DataConfig(dataset="mnist-5k", batch_size=100, **CROP)
    per_image = build_dataloaders(config)[1]
    batched = build_dataloaders(dataclasses.replace(config, batch_augment=True))[1]
    assert equal(list(per_image), list(batched)) and len(batched) == 10


def test_training_batches_are_crops_like_torchvisions_of_the_same_images():
    config = DataConfig(dataset="mnist-5k", **CROP)
    per_image = batches(config, count=20)
    batched = batches(dataclasses.replace(config, batch_augment=True), count=20)
    for (x, y), (u, w) in zip(per_image, batched):
        assert torch.equal(y, w) and u.shape == x.shape and u.dtype == torch.float32
        assert not torch.equal(x, u)
    # zoomed in alike: the digits' share of the pixels grows as much in both
    x, u = (torch.cat([b[0] for b in found]) for found in (per_image, batched))
    assert abs(x.mean() - u.mean()) < 0.02 and abs(x.std() - u.std()) < 0.02


def test_same_seed_same_batches_in_any_process_and_the_global_state_untouched():
    config = DataConfig(
        dataset="digits",
        batch_augment=True,
        random_horizontal_flip=True,
        random_erasing=0.5,
        mixup_alpha=0.8,
        **CROP,
    )
    state = torch.get_rng_state()
    reference = batches(config, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    assert equal(reference, batches(config, seed=3))
    assert equal(reference, batches(dataclasses.replace(config, num_workers=2), 3))
    assert not equal(reference, batches(config, seed=4))
    for _, targets in reference:  # mixed: probabilities
        assert torch.allclose(targets.sum(1), torch.ones(len(targets)))


def test_flip_alone_is_exact():
    config = DataConfig(dataset="digits", random_horizontal_flip=True)
    plain = batches(dataclasses.replace(config, random_horizontal_flip=False), 5)
    flipped = batches(dataclasses.replace(config, batch_augment=True), 5)
    x, u = torch.cat([b[0] for b in plain]), torch.cat([b[0] for b in flipped])
    mirrored = (u == x.flip(-1)).flatten(1).all(1)
    assert ((u == x).flatten(1).all(1) | mirrored).all()
    assert 0.3 < mirrored.float().mean() < 0.7


def test_colour_steps_stay_per_image_before_the_crop():
    config = DataConfig(dataset="digits", rand_aug=True, batch_augment=True, **CROP)
    first = batches(config, seed=0, count=2)
    assert equal(first, batches(config, seed=0, count=2))
    assert all(math.isfinite(x.sum().item()) for x, _ in first)
