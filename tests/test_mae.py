"""The masked autoencoder of chapter 16: its encoder is the ViT it wraps, on the visible
patches only, with or without a class token; bad arguments name their field."""

from dataclasses import replace

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
        loss, pred, mask = mae(images, torch.Generator().manual_seed(0)).values()
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
    for extra in (dict(distillation_token=True), dict(reg_tokens=2)):
        vit = VisionTransformer(**SMALL, num_layers=1, **extra)
        with pytest.raises(ArgumentError, match="distillation token or registers"):
            MaskedAutoencoder(vit)


def test_the_factory_builds_an_mae_that_trains_and_hands_its_encoder_on(tmp_path):
    from neural_stack.training import (
        DataConfig,
        ModelConfig,
        TrainConfig,
        build_model,
        build_trainer,
    )

    model = ModelConfig(
        name="mae", img_size=8, patch_size=2, in_channels=1, embed_dim=16, num_heads=2
    )
    model = replace(model, num_layers=1, decoder_dim=8, decoder_heads=2)
    config = TrainConfig(
        model=model,
        data=DataConfig(dataset="digits", batch_size=100),
        device="cpu",
        monitor="val/loss",
    )
    trainer = build_trainer(config)
    assert isinstance(trainer.model, MaskedAutoencoder)
    assert isinstance(trainer.model.encoder.head, torch.nn.Identity)
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert id(trainer.model.mask_token) in optimized  # the decoder trains too
    result = trainer.fit()
    assert "val/accuracy" not in result["final"] and result["final"]["val/loss"] > 0

    torch.save(trainer.model.state_dict(), tmp_path / "mae.pt")
    vit_config = replace(model, name="vit", init_from=str(tmp_path / "mae.pt"))
    vit = build_model(vit_config)
    encoder = trainer.model.encoder.state_dict()
    for key, value in vit.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, encoder[key]), key


@pytest.mark.parametrize(
    "field, value",
    [
        ("decoder_dim", 10),  # not a multiple of decoder_heads=4
        ("mask_ratio", 0.95),  # hides every one of 16 patches
        ("reg_tokens", 2),
        ("distillation_token", True),
    ],
)
def test_an_mae_section_that_cannot_build_names_its_field(field, value):
    from neural_stack.training import ModelConfig

    with pytest.raises(ArgumentError, match=f"^{field}="):
        ModelConfig(name="mae", img_size=16, patch_size=4, **{field: value}).validate()


def test_a_config_that_monitors_an_accuracy_of_an_mae_is_refused():
    from neural_stack.training import ConfigError, ModelConfig, TrainConfig

    mae = ModelConfig(name="mae", img_size=8, patch_size=2, in_channels=1)
    with pytest.raises(ConfigError, match="^monitor='val/accuracy'; expected a loss"):
        TrainConfig(model=mae)
    assert TrainConfig(model=mae, monitor="val/loss").monitor == "val/loss"
