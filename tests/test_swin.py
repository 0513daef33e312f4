"""The Swin Transformer of chapter 15 against timm's, and its building blocks against
their definitions."""

import warnings

import pytest
import torch

from neural_stack import experiments
from neural_stack.models import SwinTransformer, swin_from_timm
from neural_stack.models.swin import (
    PatchMerging,
    SwinBlock,
    shifted_window_mask,
    window_merge,
    window_partition,
)
from neural_stack.validation import ArgumentError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # timm's tqdm.auto import
    import timm
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

# Configurations timm accepts and ours must port exactly: other window sizes, stage
# counts, widths and MLP ratios, a window that shrinks to the grid on the later stages,
# and one stage only.
CONFIGS = {
    "window 4, two stages": dict(
        img_size=32, patch_size=2, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
        window_size=4,
    ),
    "digits, window 7": dict(
        img_size=28, patch_size=2, in_chans=1, embed_dim=48, depths=(2, 4),
        num_heads=(3, 6), window_size=7,
    ),
    "three stages, the last one window": dict(
        img_size=64, patch_size=4, embed_dim=16, depths=(1, 1, 3), num_heads=(1, 2, 4),
        window_size=4, mlp_ratio=2.0,
    ),
    "window 8, odd depths": dict(
        img_size=64, patch_size=2, embed_dim=24, depths=(3, 1), num_heads=(3, 3),
        window_size=8, num_classes=7,
    ),
    "one stage, window the whole grid": dict(
        img_size=16, patch_size=4, embed_dim=12, depths=(2,), num_heads=(2,),
        window_size=7, num_classes=3,
    ),
}  # fmt: skip


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    "`model` in eval mode with every parameter moved off its initial value."
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def _compare(theirs: torch.nn.Module, size: int) -> None:
    ours = swin_from_timm(theirs)
    assert not ours.training
    images = torch.randn(3, theirs.in_chans, size, size)
    with torch.no_grad():
        logits = (ours(images) - theirs(images)).abs().max().item()
        features = ours.forward_features(images) - theirs.forward_features(images)
    assert logits < 1e-5 and features.abs().max().item() < 1e-4
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in theirs.parameters()
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_ported_swin_gives_timms_logits(name):
    config = CONFIGS[name]
    _compare(_perturbed(TimmSwin(**config)), config["img_size"])


def test_ported_swin_tiny_gives_timms_logits():
    _compare(_perturbed(timm.create_model("swin_tiny_patch4_window7_224")), 224)


def test_only_timms_swin_v1_ports():
    v2 = timm.create_model("swinv2_cr_tiny_ns_224")
    with pytest.raises(ArgumentError, match="model"):
        swin_from_timm(v2)
    with pytest.raises(ArgumentError, match="average pooling"):
        swin_from_timm(TimmSwin(**CONFIGS["window 4, two stages"], global_pool=""))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(img_size=32, patch_size=2, window_size=5), "window_size"),
        (dict(num_heads=(3, 6, 12)), "num_heads"),
        (dict(embed_dim=32), "embed_dim"),
        (dict(img_size=56, patch_size=4), r"img_size / patch_size"),
        (dict(depths=(2, 0, 6, 2)), "depths"),
        (dict(drop_path=1.5), "drop_path"),
        (dict(num_classes=-1), "num_classes"),
    ],
)
def test_arguments_that_cannot_build_a_swin_name_their_field(kwargs, field):
    with pytest.raises(ArgumentError, match=f"^{field}"):
        SwinTransformer(**kwargs)


def test_images_of_another_size_are_refused_with_the_expected_shape():
    model = SwinTransformer(**_ours(CONFIGS["window 4, two stages"]))
    with pytest.raises(ValueError, match=r"expected \[batch, channels, 32, 32\]"):
        model(torch.randn(1, 3, 64, 64))


def _ours(config: dict) -> dict:
    "A timm configuration as `SwinTransformer`'s arguments."
    ours = {k: v for k, v in config.items() if k != "in_chans"}
    return ours | {"in_channels": config.get("in_chans", 3)}


def test_a_swin_trains_with_stochastic_depth_and_its_gradients_reach_every_weight():
    model = SwinTransformer(**_ours(CONFIGS["digits, window 7"]), drop_path=0.2)
    rates = [b.drop_path.p for stage in model.layers for b in stage.blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)
    torch.manual_seed(0)
    model.train()(torch.randn(4, 1, 28, 28)).logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_windows_round_trip_and_the_mask_keeps_each_token_with_itself():
    grid = torch.randn(2, 12, 8, 5)
    assert torch.equal(window_merge(window_partition(grid, 4), 4, 12, 8), grid)
    for window, shift in ((4, 2), (6, 3), (12, 5)):
        mask = shifted_window_mask(12, 12, window, shift)
        assert mask.diagonal(dim1=1, dim2=2).all()
        assert torch.equal(mask, mask.transpose(1, 2))
        # the last window joins the four corners: (w - s)² + ... pairs, four groups
        groups = ((window - shift) ** 2 + shift**2) ** 2
        assert int(mask[-1].sum()) == groups


def test_a_block_on_a_grid_no_larger_than_its_window_is_global_attention():
    block = SwinBlock(16, 2, resolution=7, window=12, shift=6)
    assert (block.window, block.shift, block.attn_mask) == (7, 0, None)
    with pytest.raises(ArgumentError, match="^shift"):
        SwinBlock(16, 2, resolution=14, window=7, shift=7)
    assert PatchMerging(8)(torch.randn(1, 4, 6, 8)).shape == (1, 2, 3, 16)


def test_a_swin_run_is_fingerprinted_by_its_own_modules():
    package = "neural_stack.models"
    modules = experiments.model_modules(
        SwinTransformer(**CONFIGS["window 4, two stages"])
    )
    assert f"{package}.swin" in modules and f"{package}.vision_transformer" in modules


def test_a_swin_builds_on_the_meta_device_for_counting():
    with torch.device("meta"):
        model = SwinTransformer()  # Swin-T
    assert sum(p.numel() for p in model.parameters()) == 28_288_354
