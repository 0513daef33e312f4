"""PatchEmbedding: shapes, equivalence with unfold + linear and with timm, argument
validation."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from neural_stack.models.patch_embedding import PatchEmbedding
from neural_stack.validation import ArgumentError


def unfold_linear(embed: PatchEmbedding, images: torch.Tensor) -> torch.Tensor:
    patches = F.unfold(
        images, kernel_size=embed.patch_size, stride=embed.patch_size
    ).transpose(1, 2)
    return F.linear(patches, embed.proj.weight.flatten(1), embed.proj.bias)


@pytest.mark.parametrize(
    "img_size,patch_size,channels,dim",
    [(32, 4, 3, 48), (28, 7, 1, 16), (16, 16, 5, 8), (12, 1, 2, 4)],
)
def test_shapes_and_conv_equals_unfold_linear(img_size, patch_size, channels, dim):
    torch.manual_seed(0)
    embed = PatchEmbedding(img_size, patch_size, channels, dim)
    x = torch.randn(2, channels, img_size, img_size)
    tokens = embed(x)
    n = (img_size // patch_size) ** 2
    assert (
        tokens.shape == (2, n, dim)
        and embed.num_patches == n
        and embed.grid_size == img_size // patch_size
    )
    torch.testing.assert_close(tokens, unfold_linear(embed, x), atol=1e-5, rtol=1e-5)


def test_raster_order():
    embed = PatchEmbedding(8, 4, 1, 1)
    with torch.no_grad():
        embed.proj.weight.fill_(1.0)
        embed.proj.bias.zero_()
    x = torch.zeros(1, 1, 8, 8)
    x[..., 0:4, 4:8] = 1.0  # top-right patch is token 1 in raster order
    assert embed(x)[0, :, 0].tolist() == [0.0, 16.0, 0.0, 0.0]


def test_other_image_sizes_and_matches_timm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from timm.layers import PatchEmbed
    ours = PatchEmbedding(32, 4, 3, 24)
    ref = PatchEmbed(img_size=32, patch_size=4, in_chans=3, embed_dim=24)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref(x))
    assert ours(torch.randn(1, 3, 24, 40)).shape == (1, 6 * 10, 24)


def test_init_is_lecun_normal():
    torch.manual_seed(0)
    embed = PatchEmbedding(64, 16, 3, 256)
    std = embed.proj.weight.std().item()
    expected = (
        1 / (3 * 16 * 16)
    ) ** 0.5  # truncated at +-2 (absolute), as torchvision: far beyond 2 std
    assert abs(std - expected) / expected < 0.05
    assert torch.count_nonzero(embed.proj.bias) == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(img_size=30, patch_size=4),
            r"img_size=30; expected a multiple of patch_size=4",
        ),
        (dict(img_size=0, patch_size=4), r"img_size=0; expected a positive integer"),
        (
            dict(img_size=32, patch_size=-4),
            r"patch_size=-4; expected a positive integer",
        ),
        (
            dict(img_size=32, patch_size=4, in_channels=3.0),
            r"in_channels=3.0; expected a positive integer",
        ),
        (
            dict(img_size=32, patch_size=4, embed_dim=True),
            r"embed_dim=True; expected a positive integer",
        ),
        (
            dict(img_size="32", patch_size=4),
            r"img_size='32'; expected a positive integer",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        PatchEmbedding(**kwargs)
    # the same rule, asked without building anything
    with pytest.raises(ArgumentError, match=match):
        PatchEmbedding.check_arguments(**{"in_channels": 3, "embed_dim": 768, **kwargs})


def test_bad_inputs():
    embed = PatchEmbedding(32, 4, 3, 8)
    with pytest.raises(ValueError, match=r"expected \[batch, 3, height, width\]"):
        embed(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expected \[batch, 3, height, width\]"):
        embed(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"not divisible by patch_size=4"):
        embed(torch.randn(1, 3, 30, 32))
