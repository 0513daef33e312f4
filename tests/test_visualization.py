"""neural_stack.visualization: rollout, maps, distances and figures, checked on the
numbers and on the plotly figure objects (not on their JSON, where plotly >= 6 writes
arrays as base64)."""

import math

import numpy as np
import pytest
import torch

from neural_stack.models import VisionTransformer
from neural_stack.visualization import (
    attention_entropy,
    attention_explorer,
    attention_map,
    attention_rollout,
    mean_attention_distance,
    plot_attention_distance,
    plot_attention_heatmap,
    plot_attention_overlay,
)


def random_attention(layers=3, B=2, H=4, N=17, seed=0, sharp=1.0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.softmax(sharp * torch.randn(B, H, N, N, generator=g), dim=-1)
        for _ in range(layers)
    ]


def rollout_formula(layers, fuse=np.mean):
    "Abnar and Zuidema's rollout in float64 NumPy, image by image."
    B, N = layers[0].shape[0], layers[0].shape[-1]
    out = np.empty((B, N, N))
    for b in range(B):
        R = np.eye(N)
        for a in layers:
            mixed = 0.5 * fuse(a[b].double().numpy(), axis=0) + 0.5 * np.eye(N)
            R = mixed / mixed.sum(axis=1, keepdims=True) @ R
        out[b] = R
    return out


# --- attention_rollout ---------------------------------------------------------------


def test_identity_attention_rolls_out_to_the_identity():
    eye = torch.eye(10).expand(3, 2, 10, 10)
    assert torch.equal(attention_rollout([eye] * 4), torch.eye(10).expand(3, 10, 10))


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_rows_sum_to_one(fusion):
    rollout = attention_rollout(random_attention(sharp=4.0), head_fusion=fusion)
    assert rollout.shape == (2, 17, 17)
    assert torch.allclose(rollout.sum(-1), torch.ones(2, 17), atol=1e-5)
    assert (rollout >= 0).all()


@pytest.mark.parametrize(
    "fusion,fuse", [("mean", np.mean), ("max", np.max), ("min", np.min)]
)
def test_rollout_equals_the_formula(fusion, fuse):
    layers = random_attention(layers=4, sharp=3.0, seed=1)
    got = attention_rollout(layers, head_fusion=fusion).double().numpy()
    np.testing.assert_allclose(got, rollout_formula(layers, fuse), atol=1e-6)


def test_rollout_of_one_layer_is_its_mixing_matrix():
    (a,) = random_attention(layers=1)
    expected = 0.5 * a.mean(1) + 0.5 * torch.eye(17)
    assert torch.allclose(attention_rollout([a]), expected, atol=1e-6)


def test_rollout_takes_a_stacked_tensor_and_a_model_output():
    layers = random_attention()
    assert torch.equal(
        attention_rollout(torch.stack(layers)), attention_rollout(layers)
    )
    model = VisionTransformer(
        img_size=8, patch_size=2, in_channels=1, embed_dim=16, num_heads=2, num_layers=2
    ).eval()
    with torch.no_grad():
        _, attentions = model(torch.randn(3, 1, 8, 8), return_attention=True)
    rollout = attention_rollout(attentions)
    assert rollout.shape == (3, 17, 17) and not rollout.requires_grad


@pytest.mark.parametrize(
    "attention",
    [
        torch.zeros(2, 4, 17, 17),  # every weight masked away
        torch.eye(17)[torch.randint(17, (2, 4, 17))],  # one-hot rows
        torch.full((2, 4, 17, 17), 1e-30),  # underflowing weights
        torch.softmax(torch.randn(2, 4, 17, 17), -1).half(),  # float16
    ],
    ids=["zeros", "one-hot", "tiny", "float16"],
)
def test_no_nan_for_any_valid_attention(attention):
    layers = [attention] * 3
    for fusion in ("mean", "max", "min"):
        rollout = attention_rollout(layers, head_fusion=fusion)
        assert torch.isfinite(rollout).all()
        assert torch.allclose(rollout.sum(-1), torch.ones(2, 17), atol=1e-3)
    assert torch.isfinite(mean_attention_distance(layers)).all()
    assert torch.isfinite(attention_entropy(layers)).all()
    assert torch.isfinite(attention_map(attention)).all()


def test_rollout_refuses_bad_input_naming_the_problem():
    layers = random_attention()
    with pytest.raises(
        ValueError, match=r"head_fusion: 'median' is not one of mean, max, min"
    ):
        attention_rollout(layers, head_fusion="median")
    with pytest.raises(ValueError, match=r"attentions\[1\]: contains NaN"):
        attention_rollout([layers[0], torch.full_like(layers[0], float("nan"))])
    with pytest.raises(ValueError, match=r"attentions\[0\]: contains negative values"):
        attention_rollout([torch.randn(2, 4, 17, 17)])
    with pytest.raises(ValueError, match=r"attentions\[1\]: expected 4 dimensions"):
        attention_rollout([layers[0], layers[1][0]])
    with pytest.raises(ValueError, match=r"attentions: no layers given"):
        attention_rollout([])
    with pytest.raises(ValueError, match=r"self-attention"):
        attention_rollout([torch.rand(2, 4, 17, 5)])


# --- attention_map, distance, entropy -------------------------------------------------


def test_attention_map_is_the_query_row_on_the_grid():
    a = torch.softmax(torch.randn(2, 3, 1 + 12, 13), -1)
    m = attention_map(a, grid_size=(3, 4))
    assert m.shape == (2, 3, 3, 4)
    assert torch.equal(m[1, 2, 2, 3], a[1, 2, 0, 12])  # last patch, row 2 col 3
    mean = attention_map(a, grid_size=(3, 4), query="mean")
    assert torch.allclose(mean, a[..., 1:, 1:].mean(-2).reshape(2, 3, 3, 4))
    no_prefix = attention_map(
        a[..., 1:, 1:], grid_size=(3, 4), query=5, num_prefix_tokens=0
    )
    assert torch.equal(no_prefix.flatten(-2), a[..., 1:, 1:][..., 5, :])


def test_attention_map_refuses_bad_grids_and_queries():
    a = torch.softmax(torch.randn(2, 17, 17), -1)
    assert attention_map(a).shape == (2, 4, 4)  # a square grid is inferred
    with pytest.raises(ValueError, match=r"grid_size: 3 x 5 = 15 patches.*16 patches"):
        attention_map(a, grid_size=(3, 5))
    with pytest.raises(
        ValueError, match=r"grid_size: 15 patch tokens do not form a square"
    ):
        attention_map(a, num_prefix_tokens=2)
    with pytest.raises(
        ValueError, match=r"query: 17 must be a token index in \[0, 17\)"
    ):
        attention_map(a, query=17)


def test_mean_attention_distance_on_known_patterns():
    N, grid, patch = 17, 4, 2.0
    uniform = torch.full((1, 2, N, N), 1 / N)
    centres = [(r * patch, c * patch) for r in range(grid) for c in range(grid)]
    pairs = sum(math.dist(p, q) for p in centres for q in centres) / len(centres) ** 2
    assert torch.allclose(
        mean_attention_distance([uniform], patch_size=patch),
        torch.full((1, 2), pairs),
        atol=1e-5,
    )
    self_only = torch.eye(N).expand(1, 2, N, N)
    assert torch.equal(mean_attention_distance([self_only]), torch.zeros(1, 2))
    # every patch attends to its right-hand neighbour (the last column to its left one)
    right = torch.zeros(1, 1, N, N)
    for r in range(grid):
        for c in range(grid):
            q = 1 + r * grid + c
            right[0, 0, q, 1 + r * grid + (c + 1 if c < grid - 1 else c - 1)] = 1
    assert torch.allclose(
        mean_attention_distance([right], patch_size=patch), torch.tensor([[patch]])
    )
    # attention that lands on the class token only: no patch to measure, no NaN
    cls_only = torch.zeros(1, 1, N, N)
    cls_only[..., 0] = 1
    assert torch.isfinite(mean_attention_distance([cls_only])).all()


def test_attention_entropy_bounds():
    N = 17
    one_hot = torch.eye(N).expand(2, 3, N, N)
    uniform = torch.full((2, 3, N, N), 1 / N)
    assert torch.equal(attention_entropy([one_hot]), torch.zeros(1, 3))
    assert torch.allclose(
        attention_entropy([uniform, uniform]), torch.full((2, 3), math.log(N))
    )
    random = attention_entropy(random_attention())
    assert ((random > 0) & (random < math.log(N))).all()


# --- figures -------------------------------------------------------------------


@pytest.mark.parametrize("H", [1, 3, 4, 6, 12])
def test_heatmap_labels_every_head_whatever_the_count(H):
    w = torch.softmax(torch.randn(H, 9, 9), -1)
    fig = plot_attention_heatmap(w)
    titles = [a.text for a in fig.layout.annotations]
    expected = ([f"mean of {H} heads"] if H > 1 else []) + [
        f"head {h}" for h in range(H)
    ]
    assert titles == expected
    assert len(fig.data) == len(expected)
    for trace, title in zip(fig.data, expected):
        assert trace.type == "heatmap" and title in trace.hovertemplate
    for h in range(H):  # the panel titled "head h" holds head h
        panel = fig.data[expected.index(f"head {h}")]
        np.testing.assert_allclose(panel.z, w[h].numpy(), atol=1e-4)
    if H > 1:
        np.testing.assert_allclose(fig.data[0].z, w.mean(0).numpy(), atol=1e-4)
    rows = math.ceil(len(expected) / 5)
    assert fig.layout.height == 120 + 260 * rows  # sized to the head count


def test_heatmap_of_all_layers_has_a_layer_slider():
    layers = [a[0] for a in random_attention(layers=3, H=2, N=5)]
    fig = plot_attention_heatmap(layers, tokens=["cls", "a", "b", "c", "d"])
    assert len(fig.data) == 3 * 3
    assert [t.visible for t in fig.data] == [True] * 3 + [False] * 6
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["0", "1", "2"]
    for layer, step in enumerate(steps):
        visible = step.args[0]["visible"]
        assert [i for i, v in enumerate(visible) if v] == [
            3 * layer,
            3 * layer + 1,
            3 * layer + 2,
        ]
        np.testing.assert_allclose(
            fig.data[3 * layer + 1].z, layers[layer][0].numpy(), atol=1e-4
        )
    assert list(fig.data[0].x) == ["cls", "a", "b", "c", "d"]
    assert "query %{y}<br>key %{x}<br>weight" in fig.data[0].hovertemplate


def test_heatmap_refuses_bad_input():
    with pytest.raises(ValueError, match=r"exceed max_tokens=128.*attention_map"):
        plot_attention_heatmap(torch.full((2, 197, 197), 1 / 197))
    assert (
        len(
            plot_attention_heatmap(
                torch.full((1, 197, 197), 1 / 197), max_tokens=None
            ).data
        )
        == 1
    )
    with pytest.raises(ValueError, match=r"tokens: expected 5 distinct names"):
        plot_attention_heatmap(
            torch.full((2, 5, 5), 0.2), tokens=["a", "a", "b", "c", "d"]
        )
    with pytest.raises(ValueError, match=r"expected \[Tq, Tk\], \[H, Tq, Tk\] or"):
        plot_attention_heatmap(torch.full((1, 1, 2, 5, 5), 0.2))
    with pytest.raises(ValueError, match=r"attention_scores: contains NaN"):
        plot_attention_heatmap(torch.full((2, 5, 5), float("nan")))


def test_overlay_draws_each_map_on_its_patches():
    images = torch.rand(3, 1, 8, 8)
    maps = torch.rand(3, 4, 4)
    fig = plot_attention_overlay(images, maps, titles=["a", "b", "c"])
    kinds = [t.type for t in fig.data]
    assert kinds == ["image", "heatmap"] * 3
    for i in range(3):
        heat = fig.data[2 * i + 1]
        np.testing.assert_allclose(heat.z, maps[i].numpy(), atol=1e-4)
        assert (
            heat.dx == 2 and heat.dy == 2 and heat.x0 == 0.5
        )  # a patch covers 2 x 2 px
        assert fig.data[2 * i].z.shape == (8, 8, 3)
    assert [a.text for a in fig.layout.annotations] == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"titles: expected 3 titles, got 2"):
        plot_attention_overlay(images, maps, titles=["a", "b"])
    with pytest.raises(ValueError, match=r"a 3 x 3 grid does not tile 8 x 8 images"):
        plot_attention_overlay(images, torch.rand(3, 3, 3))


def test_distance_plot_has_one_series_per_head():
    d = torch.rand(3, 4)
    fig = plot_attention_distance(d, uniform=0.5)
    assert [t.name for t in fig.data] == [f"head {h}" for h in range(4)]
    np.testing.assert_allclose(fig.data[2].y, d[:, 2].numpy(), atol=1e-3)


def test_explorer_controls_select_image_layer_and_map():
    B, L, H, grid = 3, 2, 2, 4
    layers = random_attention(layers=L, B=B, H=H, sharp=3.0)
    images = torch.rand(B, 1, 8, 8)
    fig = attention_explorer(images, layers, titles=["x", "y", "z"])
    options = ["mean of heads", "rollout", "head 0", "head 1"]
    dropdown, buttons = fig.layout.updatemenus
    assert [b.label for b in buttons.buttons] == options
    assert [b.label for b in dropdown.buttons] == ["x", "y", "z"]
    backgrounds = [t for t in fig.data if t.type == "image"]
    maps = [t for t in fig.data if t.type == "heatmap"]
    assert len(backgrounds) == B * L and len(maps) == len(options) * B * L
    # the image menu and the layer slider move the view onto one image and one layer
    x_ranges = [b.args[0]["xaxis.range"] for b in dropdown.buttons]
    y_ranges = [s.args[0]["yaxis.range"] for s in fig.layout.sliders[0].steps]
    assert (
        len({tuple(r) for r in x_ranges}) == B
        and len({tuple(r) for r in y_ranges}) == L
    )
    first = len(backgrounds)
    expected = {
        "mean of heads": [attention_map(a.mean(1)) for a in layers],
        "rollout": [
            attention_map(attention_rollout(layers[: l + 1])) for l in range(L)
        ],
        "head 0": [attention_map(a[:, 0]) for a in layers],
        "head 1": [attention_map(a[:, 1]) for a in layers],
    }
    for k, button in enumerate(buttons.buttons):
        visible, indices = button.args
        shown = [i for i, v in zip(indices, visible["visible"]) if v]
        assert len(shown) == B * L
        for i in shown:
            trace = fig.data[i]
            # the map lies in the view of exactly one image and one layer
            b = [n for n, r in enumerate(x_ranges) if r[0] < trace.x0 < r[1]]
            l = [n for n, r in enumerate(y_ranges) if r[1] < trace.y0 < r[0]]
            assert len(b) == 1 and len(l) == 1
            np.testing.assert_allclose(
                trace.z, expected[options[k]][l[0]][b[0]].numpy(), atol=1e-4
            )
    assert [bool(t.visible) for t in fig.data[first:]] == [True] * B * L + [
        False
    ] * 3 * B * L
    assert fig.layout.xaxis.range == tuple(x_ranges[0])
    assert fig.layout.yaxis.range == tuple(y_ranges[-1])  # opens on the last layer
    assert all(np.isfinite(t.z).all() for t in maps)


def test_explorer_refuses_mismatched_input():
    layers = random_attention(B=2)
    with pytest.raises(ValueError, match=r"images: expected \[B, C, H, W\] with B = 2"):
        attention_explorer(torch.rand(3, 1, 8, 8), layers)
    with pytest.raises(ValueError, match=r"titles: expected 2 titles, got 1"):
        attention_explorer(torch.rand(2, 1, 8, 8), layers, titles=["a"])
    with pytest.raises(ValueError, match=r"opacity: 2 must be between 0 and 1"):
        attention_explorer(torch.rand(2, 1, 8, 8), layers, opacity=2)
