"""Scaled dot-product and multi-head attention: properties, equivalence with torch, bad
input."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neural_stack.models import (
    MultiHeadAttention,
    ScaledDotProductAttention,
    from_torch_mha,
    to_torch_mha,
)
from neural_stack.models.attention import masked_softmax

SEEDS = range(12)


def random_case(seed: int, dtype=torch.float32):
    """Random leading dims, lengths and head size, with a random mask of a random kind
    and broadcast shape."""
    g = torch.Generator().manual_seed(seed)
    lead = tuple(
        int(n)
        for n in torch.randint(
            1, 4, (int(torch.randint(0, 3, (1,), generator=g)),), generator=g
        )
    )
    tq, tk, d, dv = (int(n) for n in torch.randint(1, 12, (4,), generator=g))
    q = torch.randn(*lead, tq, d, generator=g).to(dtype)
    k = torch.randn(*lead, tk, d, generator=g).to(dtype)
    v = torch.randn(*lead, tk, dv, generator=g).to(dtype)
    kind = seed % 4
    # broadcast shape: drop some leading dims or set them to 1
    mask_shape = tuple(1 if i % 2 else n for i, n in enumerate(lead))[seed % 2 :] + (
        tq,
        tk,
    )
    if kind == 0:
        mask = None
    elif kind == 1:
        mask = torch.rand(mask_shape, generator=g) > 0.4
        mask.view(-1, tk)[0] = False  # at least one fully masked row
    elif kind == 2:
        mask = torch.randn(mask_shape, generator=g).to(dtype)
    else:
        mask = torch.ones(tq, tk, dtype=torch.bool).tril(diagonal=tk - tq)
    return q, k, v, mask


@pytest.mark.parametrize("seed", SEEDS)
def test_matches_torch_sdpa(seed):
    q, k, v, mask = random_case(seed)
    out, weights = ScaledDotProductAttention()(q, k, v, attn_mask=mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.shape == ref.shape and weights.shape == q.shape[:-1] + (k.shape[-2],)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_weights_are_softmax_rows(seed):
    q, k, v, mask = random_case(seed)
    _, weights = ScaledDotProductAttention()(q, k, v, attn_mask=mask)
    sums = weights.sum(-1)
    assert ((sums - 1).abs() < 1e-5).logical_or(sums == 0).all()
    assert (weights >= 0).all() and not weights.isnan().any()
    if mask is not None and mask.dtype == torch.bool:
        assert (weights[~mask.expand_as(weights)] == 0).all()


def test_weights_match_explicit_formula():
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(2, 5, 8, generator=g),
        torch.randn(2, 7, 8, generator=g),
        torch.randn(2, 7, 3, generator=g),
    )
    out, weights = ScaledDotProductAttention()(q, k, v)
    expected = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(out, expected @ v)


def test_bool_and_float_masks_agree():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 6, 4, generator=g) for _ in range(3))
    keep = torch.rand(3, 6, 6, generator=g) > 0.5
    additive = torch.zeros(3, 6, 6).masked_fill(~keep, float("-inf"))
    attn = ScaledDotProductAttention()
    torch.testing.assert_close(
        attn(q, k, v, keep), attn(q, k, v, additive), atol=0, rtol=0
    )


@pytest.mark.parametrize("mask_seed", range(8))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_masks(dtype, mask_seed):
    q, k, v, _ = random_case(3, dtype)
    mask = (
        torch.rand(
            q.shape[-2], k.shape[-2], generator=torch.Generator().manual_seed(mask_seed)
        )
        > 0.5
    )
    mask[0] = False
    out, weights = ScaledDotProductAttention()(q, k, v, attn_mask=mask)
    assert out.dtype == dtype and weights.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert (out[..., 0, :] == 0).all()
    ref, _ = ScaledDotProductAttention()(
        q.double(), k.double(), v.double(), attn_mask=mask
    )
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    # a large negative additive mask becomes -inf in float16 and stays finite in
    # bfloat16: either way the result is finite and, on rows with a visible key, equals
    # torch's attention under the same mask (a fully masked row is uniform in bfloat16,
    # where -1e9 + score rounds to -1e9 for every key)
    additive = torch.zeros(mask.shape).masked_fill(~mask, -1e9).to(dtype)
    out2, _ = ScaledDotProductAttention()(q, k, v, attn_mask=additive)
    assert torch.isfinite(out2).all()
    ref2 = F.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), attn_mask=additive.double()
    )
    visible = mask.any(-1)
    torch.testing.assert_close(
        out2[..., visible, :].double(), ref2[..., visible, :], atol=tol, rtol=tol
    )


def test_fully_masked_rows_are_zero_with_finite_gradients():
    q = torch.randn(2, 4, 8, requires_grad=True)
    k, v = (
        torch.randn(2, 5, 8, requires_grad=True),
        torch.randn(2, 5, 8, requires_grad=True),
    )
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2] = False
    out, weights = ScaledDotProductAttention()(q, k, v, attn_mask=mask)
    assert (out[:, 2] == 0).all() and (weights[:, 2] == 0).all()
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[:, 2] == 0).all()


def test_gradients_match_torch():
    g = torch.Generator().manual_seed(2)
    inputs = [
        torch.randn(2, 3, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
        for _ in range(3)
    ]
    mask = torch.rand(5, 5, generator=g) > 0.3
    ours, _ = ScaledDotProductAttention()(*inputs, attn_mask=mask)
    ours_grads = torch.autograd.grad(ours.sin().sum(), inputs)
    ref = F.scaled_dot_product_attention(*inputs, attn_mask=mask)
    ref_grads = torch.autograd.grad(ref.sin().sum(), inputs)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(
        lambda q, k, v: ScaledDotProductAttention()(q, k, v, attn_mask=mask)[0],
        [t.detach()[:1, :1].requires_grad_() for t in inputs],
    )


def test_dropout_applies_to_values_not_returned_weights():
    torch.manual_seed(0)
    attn = ScaledDotProductAttention(dropout=0.5).train()
    q, k, v = torch.randn(4, 6, 8), torch.randn(4, 6, 8), torch.eye(6).expand(4, 6, 6)
    out, weights = attn(q, k, v)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 6))  # clean softmax
    kept = out != 0  # v = I: out is the dropped weights
    assert 0.3 < kept.float().mean() < 0.7
    # survivors scaled by 1/(1-p)
    torch.testing.assert_close(out[kept], 2 * weights[kept])
    attn.eval()
    torch.testing.assert_close(attn(q, k, v)[0], weights)


def test_masked_softmax_keeps_dtype_and_zeroes_empty_rows():
    scores = torch.tensor(
        [[1.0, 2.0], [float("-inf"), float("-inf")]], dtype=torch.bfloat16
    )
    w = masked_softmax(scores)
    assert w.dtype == torch.bfloat16 and (w[1] == 0).all()
    torch.testing.assert_close(
        w[0].float(), torch.tensor([1.0, 2.0]).softmax(-1), atol=1e-2, rtol=0
    )


# ---- multi-head attention
# ------------------------------------------------------------------------

MHA_CASES = [  # (embed_dim, heads, B, Tq, Tk, self_attention, mask kind, bias)
    (16, 1, 1, 1, 1, True, None, True),
    (32, 4, 2, 7, 7, True, "causal", True),
    (48, 6, 3, 5, 9, False, "padding", True),
    (24, 3, 2, 10, 4, False, "float", False),
    (64, 8, 1, 16, 16, True, "padding", True),
    (20, 5, 4, 3, 11, False, "per-head", True),
]


def mha_inputs(case, seed=0):
    D, H, B, Tq, Tk, self_attn, kind, bias = case
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(B, Tq, D, generator=g)
    key = query if self_attn else torch.randn(B, Tk, D, generator=g)
    value = query if self_attn else torch.randn(B, Tk, D, generator=g)
    Tk = key.shape[1]
    ours_mask = ref_kwargs = None
    ref_kwargs = {}
    if kind == "causal":
        ours_mask = torch.ones(Tq, Tk, dtype=torch.bool).tril()
        ref_kwargs = {"attn_mask": ~ours_mask}
    elif kind == "padding":
        keep = torch.arange(Tk) < torch.randint(1, Tk + 1, (B, 1), generator=g)
        ours_mask = keep[:, None, None, :]
        ref_kwargs = {"key_padding_mask": ~keep}
    elif kind == "float":
        ours_mask = torch.randn(Tq, Tk, generator=g)
        ref_kwargs = {"attn_mask": ours_mask}
    elif kind == "per-head":
        ours_mask = torch.rand(B, H, Tq, Tk, generator=g) > 0.3
        ours_mask[..., 0] = True  # torch's module gives NaN for empty rows
        ref_kwargs = {"attn_mask": (~ours_mask).reshape(B * H, Tq, Tk)}
    return query, key, value, ours_mask, ref_kwargs


@pytest.mark.parametrize("case", MHA_CASES, ids=lambda c: f"D{c[0]}-H{c[1]}-{c[6]}")
def test_mha_matches_torch_module(case):
    torch.manual_seed(0)
    mha = MultiHeadAttention(case[0], case[1], bias=case[7]).eval()
    ref = to_torch_mha(mha)
    query, key, value, mask, ref_kwargs = mha_inputs(case)
    ref_out, ref_w = ref(query, key, value, average_attn_weights=False, **ref_kwargs)
    out, weights = mha(query, key, value, attn_mask=mask)
    fused, none = mha(query, key, value, attn_mask=mask, need_weights=False)
    assert none is None and weights.shape == (
        query.shape[0],
        case[1],
        query.shape[1],
        key.shape[1],
    )
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, ref_w, atol=1e-6, rtol=0)
    torch.testing.assert_close(fused, ref_out, atol=1e-6, rtol=0)


def test_mha_self_attention_fast_path_equals_separate_projections():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(
        mha(x, x, x)[0], mha(x, x.clone(), x.clone())[0], atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mha_half_precision_with_mask(dtype):
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4).to(dtype)
    x = torch.randn(2, 6, 32, dtype=dtype)
    keep = torch.tensor([[True] * 6, [True] * 2 + [False] * 4])[:, None, None, :]
    for need_weights in (True, False):
        out, _ = mha(x, x, x, attn_mask=keep, need_weights=need_weights)
        assert out.dtype == dtype and torch.isfinite(out).all()
    ref, _ = mha.float()(x.float(), x.float(), x.float(), attn_mask=keep)
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)
    # a float32 additive mask is accepted with half-precision inputs on both paths
    mha.to(dtype)
    bias = torch.randn(6, 6)
    explicit, _ = mha(x, x, x, attn_mask=bias)
    fused, _ = mha(x, x, x, attn_mask=bias, need_weights=False)
    torch.testing.assert_close(fused.float(), explicit.float(), atol=5e-2, rtol=5e-2)


def test_mha_fully_masked_query_gives_bias_only_output_on_both_paths():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2)
    x = torch.randn(1, 4, 16)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[1] = False
    explicit, _ = mha(x, x, x, attn_mask=mask)
    fused, _ = mha(x, x, x, attn_mask=mask, need_weights=False)
    torch.testing.assert_close(explicit[0, 1], mha.out_proj.bias.detach())
    torch.testing.assert_close(fused, explicit, atol=1e-6, rtol=0)


def test_mha_gradients_match_between_paths():
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, 3)
    x = torch.randn(2, 5, 24)
    grads = []
    for need_weights in (True, False):
        mha.zero_grad()
        mha(x, x, x, need_weights=need_weights)[0].square().sum().backward()
        grads.append([p.grad.clone() for p in mha.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_mha_dropout_only_in_training():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2, dropout=0.5)
    x = torch.randn(2, 8, 16)
    assert not torch.equal(mha(x, x, x)[0], mha(x, x, x)[0])
    mha.eval()
    for need_weights in (True, False):
        assert torch.equal(
            mha(x, x, x, need_weights=need_weights)[0],
            mha(x, x, x, need_weights=need_weights)[0],
        )


# ---- bad input
# -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"embed_dim": 30, "num_heads": 4},
            r"embed_dim=30; expected a multiple of num_heads=4",
        ),
        (
            {"embed_dim": 16, "num_heads": 2, "bias": 1},
            r"bias=1; expected True or False",
        ),
        ({"embed_dim": 0, "num_heads": 1}, r"embed_dim=0; expected a positive integer"),
        (
            {"embed_dim": 16, "num_heads": 2.0},
            r"num_heads=2.0; expected a positive integer",
        ),
        (
            {"embed_dim": 16, "num_heads": 2, "dropout": 1.0},
            r"dropout=1.0; expected a probability in \[0, 1\)",
        ),
        ({"embed_dim": 16, "num_heads": 2, "dropout": -0.1}, r"dropout=-0.1"),
    ],
)
def test_mha_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiHeadAttention(**kwargs)


def test_sdpa_bad_arguments():
    attn = ScaledDotProductAttention()
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 5)
    with pytest.raises(ValueError, match=r"dropout=2"):
        ScaledDotProductAttention(dropout=2)
    with pytest.raises(ValueError, match=r"query dim 8 != key dim 6"):
        attn(q, torch.randn(2, 4, 6), v)
    with pytest.raises(ValueError, match=r"keys and values differ in length"):
        attn(q, k, torch.randn(2, 5, 5))
    with pytest.raises(
        ValueError, match=r"mask of shape \(4, 3\) does not broadcast .* \(2, 3, 4\)"
    ):
        attn(q, k, v, attn_mask=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask has dtype torch.int64"):
        attn(q, k, v, attn_mask=torch.ones(3, 4, dtype=torch.long))


def test_mha_bad_inputs():
    mha = MultiHeadAttention(16, 4)
    x = torch.randn(2, 5, 16)
    with pytest.raises(
        ValueError,
        match=r"query has shape \(2, 5, 12\); expected \[batch, length, 16\]",
    ):
        mha(torch.randn(2, 5, 12), x, x)
    with pytest.raises(ValueError, match=r"key has shape \(5, 16\)"):
        mha(x, torch.randn(5, 16), x)
    with pytest.raises(
        ValueError, match=r"batch sizes differ: query 2, key 3, value 3"
    ):
        mha(x, torch.randn(3, 5, 16), torch.randn(3, 5, 16))
    with pytest.raises(ValueError, match=r"key length 5 != value length 6"):
        mha(x, x, torch.randn(2, 6, 16))
    for need_weights in (True, False):
        with pytest.raises(
            ValueError,
            match=r"mask of shape \(2, 5\) does not broadcast .* \(2, 4, 5, 5\)",
        ):
            mha(
                x,
                x,
                x,
                attn_mask=torch.ones(2, 5, dtype=torch.bool),
                need_weights=need_weights,
            )


# ---- ports to and from torch.nn.MultiheadAttention
# ------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_torch_mha_port_round_trips_exactly(bias):
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, 3, dropout=0.1, bias=bias).double().eval()
    ref = to_torch_mha(mha)
    assert (
        ref.batch_first
        and ref.dropout == 0.1
        and ref.in_proj_weight.dtype == torch.float64
        and not ref.training
    )
    back = from_torch_mha(ref)
    assert back.dropout == 0.1 and not back.training
    assert list(back.state_dict()) == list(mha.state_dict())
    assert all(
        torch.equal(a, b)
        for a, b in zip(back.state_dict().values(), mha.state_dict().values())
    )
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            ref(x, x, x, need_weights=False)[0], mha(x, x, x)[0], atol=1e-12, rtol=0
        )


def test_from_torch_mha_refuses_what_it_cannot_represent():
    for kwargs in (dict(kdim=8), dict(add_bias_kv=True), dict(add_zero_attn=True)):
        with pytest.raises(
            ValueError,
            match=(
                "kdim == vdim == embed_dim, add_bias_kv=False and add_zero_attn=False"
            ),
        ):
            from_torch_mha(nn.MultiheadAttention(16, 2, batch_first=True, **kwargs))
