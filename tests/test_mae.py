"""The masked autoencoder of chapter 16: its encoder is the ViT it wraps, on the visible
patches only, with or without a class token; bad arguments name their field."""

import pytest
import torch

from neural_stack.models import MaskedAutoencoder, VisionTransformer
from neural_stack.models.mae import patchify, random_masking, unpatchify
from neural_stack.validation import ArgumentError

SMALL = dict(img_size=16, patch_size=4, in_channels=2, embed_dim=32, num_heads=2)


@pytest.mark.parametrize("use_cls_token", [True, False])
def test_the_encoder_is_the_vit_on_the_visible_patches(use_cls_token):
    torch.manual_seed(0)
    vit = VisionTransformer(**SMALL, num_layers=2, use_cls_token=use_cls_token).eval()
    mae = MaskedAutoencoder(vit, decoder_dim=16, decoder_heads=2).eval()
    images = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        everything, mask, _ = mae.encode(images, mask_ratio=0.0)
        assert not mask.any()
        gap = (everything - vit.forward_features(images)).abs().max().item()
        loss, pred, mask = mae(images, generator=torch.Generator().manual_seed(0))
    assert gap < 1e-6
    assert pred.shape == (2, 16, 32) and mask.sum(dim=1).tolist() == [12, 12]
    assert torch.isfinite(loss)


def test_masking_draws_a_new_subset_for_every_image_and_every_call():
    tokens = torch.randn(64, 16, 4)
    first = random_masking(tokens, 0.5)[1]
    second = random_masking(tokens, 0.5)[1]
    assert (first.sum(dim=1) == 8).all() and not torch.equal(first, second)
    assert len({tuple(row.tolist()) for row in first}) > 32


def test_patches_round_trip_for_non_square_images():
    images = torch.randn(3, 3, 8, 20)
    assert torch.equal(unpatchify(patchify(images, 4), 4, 8), images)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(mask_ratio=-0.1), "mask_ratio"),
        (dict(decoder_layers=0), "decoder_layers"),
        (dict(norm_pix_loss="yes"), "norm_pix_loss"),
    ],
)
def test_arguments_that_cannot_build_an_mae_name_their_field(kwargs, field):
    with pytest.raises(ArgumentError, match=f"^{field}="):
        MaskedAutoencoder(VisionTransformer(**SMALL, num_layers=1), **kwargs)


def test_only_a_vit_without_a_distillation_token_is_an_encoder():
    with pytest.raises(ArgumentError, match="^encoder="):
        MaskedAutoencoder(torch.nn.Linear(2, 2))
    deit = VisionTransformer(**SMALL, num_layers=1, distillation_token=True)
    with pytest.raises(ArgumentError, match="distillation token"):
        MaskedAutoencoder(deit)
