"""PositionalEmbedding: four types, the factory, resampling invariants, references."""

import warnings

import numpy as np
import pytest
import torch

from neural_stack.models.positional_embedding import (
    LearnedPositionalEmbedding1d,
    PositionalEmbedding,
    resample_grid_table,
    sincos_2d,
    to_grid,
)
from neural_stack.validation import ArgumentError

KINDS = tuple(PositionalEmbedding.kinds)


def make(kind, img=32, patch=4, dim=16, cls=True):
    torch.manual_seed(0)
    return PositionalEmbedding.create(kind, img, patch, dim, cls)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls", [True, False])
def test_adds_table_with_right_shape(kind, cls):
    pos = make(kind, cls=cls)
    x = torch.randn(2, 64 + cls, 16)
    out = pos(x)
    table = pos.embedding()
    if kind == "none":
        assert table is None and out is x
    else:
        assert table.shape == (1, 64 + cls, 16)
        torch.testing.assert_close(out, x + table)


@pytest.mark.parametrize(
    "kind,cls,expected",
    [
        ("none", True, 0),
        ("sincos-2d", True, 0),
        ("learned-1d", True, 65 * 16),
        ("learned-1d", False, 64 * 16),
        ("learned-2d", True, 8 * 8 + 8 * 8 + 16),
        ("learned-2d", False, 8 * 8 + 8 * 8),
    ],
)
def test_parameter_counts(kind, cls, expected):
    assert sum(p.numel() for p in make(kind, cls=cls).parameters()) == expected


def test_learned_init_std():
    pos = make("learned-1d", img=64, patch=2, dim=256)  # 1025 x 256 values
    assert abs(pos.weight.std().item() - 0.02) < 0.002
    assert pos.weight.abs().max().item() < 0.1


def test_learned_2d_is_row_and_column_halves():
    pos = make("learned-2d", img=12, patch=4, dim=8, cls=True)  # 3 x 3 grid
    table = pos.embedding()[0]
    assert torch.equal(table[0], pos.cls_weight[0, 0])
    grid = table[1:].reshape(3, 3, 8)
    for i in range(3):
        for j in range(3):
            assert torch.equal(grid[i, j, :4], pos.row_weight[i]) and torch.equal(
                grid[i, j, 4:], pos.col_weight[j]
            )


def test_sincos_matches_big_vision_and_is_not_saved():
    h, w, width = 5, 7, 32
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / 10000 ** (np.arange(width // 4) / (width // 4 - 1))
    y, x = y.flatten()[:, None] * omega, x.flatten()[:, None] * omega
    ref = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    np.testing.assert_allclose(sincos_2d((h, w), width).numpy(), ref, atol=1e-6)
    pos = make("sincos-2d")
    assert list(pos.state_dict()) == [] and list(pos.parameters()) == []
    assert torch.equal(pos.embedding()[0, 0], torch.zeros(16))  # class token row
    torch.testing.assert_close(pos.embedding()[0, 1:], sincos_2d(8, 16))


@pytest.mark.parametrize("kind", KINDS)
def test_resample_identity_when_unchanged(kind):
    pos = make(kind)
    same = pos.resample(8)
    assert same is not pos and same.grid_size == (8, 8)
    for a, b in zip(pos.state_dict().values(), same.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    if kind in ("learned-1d", "sincos-2d"):
        # the stored table itself: no interpolation at all
        assert pos.embedding((8, 8)) is pos.embedding()
    if kind == "learned-2d":
        row, col = pos.tables((8, 8))
        assert row is pos.row_weight and col is pos.col_weight
    if kind != "none":
        assert torch.equal(same.embedding(), pos.embedding())


@pytest.mark.parametrize("kind", ["learned-1d", "learned-2d", "sincos-2d"])
@pytest.mark.parametrize("new_grid", [12, (5, 9), 4])
def test_resample_keeps_cls_row_and_agrees_with_on_the_fly(kind, new_grid):
    pos = make(kind)
    before = {k: v.clone() for k, v in pos.state_dict().items()}
    moved = pos.resample(new_grid)
    rows, cols = to_grid(new_grid)
    assert moved.grid_size == (rows, cols) and moved.embedding().shape == (
        1,
        1 + rows * cols,
        16,
    )
    assert torch.equal(moved.embedding()[:, 0], pos.embedding()[:, 0])
    x = torch.randn(2, 1 + rows * cols, 16)
    assert torch.equal(pos(x, (rows, cols)), moved(x))
    for k, v in pos.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("new_grid", [12, (3, 5)])
def test_sincos_resample_equals_fresh(new_grid):
    rows, cols = to_grid(new_grid)
    moved = make("sincos-2d").resample(new_grid)
    fresh = sincos_2d((rows, cols), 16)
    assert torch.equal(moved.embedding()[0, 1:], fresh)
    if rows == cols:
        assert torch.equal(
            moved.embedding(), make("sincos-2d", img=4 * rows).embedding()
        )


def test_learned_1d_resample_matches_timm_and_is_bicubic():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from timm.layers import resample_abs_pos_embed
    pos = make("learned-1d")
    for new in ((12, 12), (4, 6)):
        ref = resample_abs_pos_embed(
            pos.weight,
            new_size=list(new),
            old_size=[8, 8],
            num_prefix_tokens=1,
            interpolation="bicubic",
            antialias=False,
        )
        torch.testing.assert_close(pos.embedding(new), ref)
    # bicubic weights sum to one: a constant table stays constant; and it matches
    # F.interpolate directly
    assert torch.allclose(
        resample_grid_table(torch.full((1, 64, 3), 0.7), (8, 8), (11, 5)),
        torch.full((1, 55, 3), 0.7),
    )
    grid = pos.weight[:, 1:].reshape(1, 8, 8, 16).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(
        grid, size=(12, 12), mode="bicubic", align_corners=False
    )
    torch.testing.assert_close(
        pos.embedding(12)[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 144, 16)
    )


def test_resample_is_differentiable_on_the_fly():
    pos = make("learned-2d")
    pos(torch.zeros(1, 1 + 36, 16), 6).sum().backward()
    assert pos.row_weight.grad is not None and pos.col_weight.grad.abs().sum() > 0


def test_unknown_type_lists_valid_ones():
    with pytest.raises(
        ArgumentError,
        match=(
            r"positional_embedding='learned-3d'; expected one of "
            r"'none', 'learned-1d', 'learned-2d', 'sincos-2d'"
        ),
    ):
        PositionalEmbedding.create("learned-3d", 32, 4, 16)


def test_registry_is_the_one_list_of_kinds():
    assert KINDS == ("none", "learned-1d", "learned-2d", "sincos-2d")
    assert all(
        PositionalEmbedding.kinds[k].kind == k and type(make(k)).kind == k
        for k in KINDS
    )

    # a new kind is one subclass
    class Shifted(LearnedPositionalEmbedding1d, kind="test-shifted"):
        pass

    try:
        assert type(PositionalEmbedding.create("test-shifted", 32, 4, 16)) is Shifted
    finally:
        del PositionalEmbedding.kinds["test-shifted"]
    with pytest.raises(ArgumentError, match="test-shifted"):
        PositionalEmbedding.create("test-shifted", 32, 4, 16)


@pytest.mark.parametrize(
    "args,match",
    [
        (
            ("learned-2d", 32, 4, 15),
            r"embed_dim=15; expected a multiple of 2 for 'learned-2d' "
            r"\(a row half and a column half\)",
        ),
        (
            ("sincos-2d", 32, 4, 18),
            r"embed_dim=18; expected a multiple of 4 for 'sincos-2d'",
        ),
        (
            ("learned-1d", 30, 4, 16),
            r"img_size=30; expected a multiple of patch_size=4",
        ),
        (("learned-1d", 32, 0, 16), r"patch_size=0; expected a positive integer"),
        (("none", 32, 4, -1), r"embed_dim=-1; expected a positive integer"),
        (("learned-1d", 32, 4, 16, 1), r"use_cls_token=1; expected True or False"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(ArgumentError, match=match):
        PositionalEmbedding.create(*args)
    with pytest.raises(ArgumentError, match=match):
        # a subclass built directly checks the same
        PositionalEmbedding.kinds[args[0]](*args[1:])


@pytest.mark.parametrize("kind", KINDS)
def test_bad_token_count_and_grid(kind):
    pos = make(kind)
    with pytest.raises(
        ValueError,
        match=r"expected \[batch, 65, 16\] for a 8 x 8 grid plus the class token",
    ):
        pos(torch.randn(2, 64, 16))
    with pytest.raises(
        ValueError, match=r"grid_size\[1\]=0; expected a positive integer"
    ):
        pos.resample((4, 0))
    with pytest.raises(
        ValueError,
        match=r"grid_size=\(1, 2, 3\); expected a positive integer or a pair",
    ):
        pos(torch.randn(2, 65, 16), (1, 2, 3))


def test_resampling_keeps_float64_precision():
    pos = make("learned-1d").double()
    table = pos.embedding(12)
    assert table.dtype == torch.float64
    grid = pos.weight[:, 1:].reshape(1, 8, 8, 16).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(
        grid, size=(12, 12), mode="bicubic", align_corners=False
    )
    torch.testing.assert_close(
        table[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 144, 16), atol=1e-12, rtol=0
    )
