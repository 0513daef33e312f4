"""Trainer: equals a hand-written loop, accumulation equals one large batch,
per-sample averaging, clipping, mixed precision, devices, hooks, determinism."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from neural_stack.models import VisionTransformer
from neural_stack.training.trainer import (
    Callback,
    DeviceError,
    Trainer,
    resolve_device,
    resolve_threads,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def data(n=100, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(n, 1, 8, 8, generator=g), torch.randint(classes, (n,), generator=g)
    )


def vit(**kwargs):
    torch.manual_seed(0)
    return VisionTransformer(
        **{
            **dict(
                img_size=8,
                patch_size=2,
                in_channels=1,
                num_classes=3,
                embed_dim=16,
                num_heads=2,
                num_layers=2,
            ),
            **kwargs,
        }
    )


def loader(dataset, batch_size=16, shuffle=False):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(1),
    )


def max_diff(a, b):
    return max(
        (x - y).abs().max().item()
        for x, y in zip(a.state_dict().values(), b.state_dict().values())
    )


def test_matches_a_hand_written_loop():
    model, ref = vit(), vit()
    ds = data()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 3, 0.5)
    Trainer(
        model,
        opt,
        loader(ds, shuffle=True),
        lr_scheduler=sched,
        device="cpu",
        num_epochs=2,
    ).fit()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, 3, 0.5)
    train = loader(ds, shuffle=True)
    ref.train()
    for _ in range(2):
        for x, y in train:
            loss = nn.functional.cross_entropy(ref(x), y)
            ref_opt.zero_grad()
            loss.backward()
            ref_opt.step()
            ref_sched.step()
    assert max_diff(model, ref) < 1e-5
    assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]


@pytest.mark.parametrize("batch_size,accumulate", [(25, 4), (30, 4), (7, 15), (100, 1)])
def test_accumulation_equals_one_large_batch(batch_size, accumulate):
    ds = data()
    big = vit()
    Trainer(
        big, torch.optim.SGD(big.parameters(), lr=0.5), loader(ds, 100), device="cpu"
    ).fit()
    small = vit()
    result = Trainer(
        small,
        torch.optim.SGD(small.parameters(), lr=0.5),
        loader(ds, batch_size),
        device="cpu",
        grad_accum_steps=accumulate,
    ).fit()
    assert result["steps"] == math.ceil(math.ceil(100 / batch_size) / accumulate)
    if result["steps"] == 1:
        assert max_diff(big, small) < 1e-6


def test_the_last_short_group_is_applied_and_averaged_per_sample():
    # 100 samples in batches of 30 with 2 accumulated: steps over 60 and 40 samples.
    ds = data()
    model = vit()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    Trainer(model, opt, loader(ds, 30), device="cpu", grad_accum_steps=2).fit()
    ref = vit()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    ref.train()
    for first, last in ((0, 60), (60, 100)):
        x, y = ds.tensors[0][first:last], ds.tensors[1][first:last]
        ref_opt.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        ref_opt.step()
    assert max_diff(model, ref) < 1e-6


def test_reported_losses_are_per_sample_averages():
    ds = data(n=50)
    model = vit()
    result = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=1e-12),
        loader(ds, 16),
        loader(ds, 7),
        device="cpu",
    ).fit()
    model.eval()
    with torch.no_grad():
        logits = model(ds.tensors[0])
        expected = nn.functional.cross_entropy(logits, ds.tensors[1]).item()
        accuracy = (logits.argmax(-1) == ds.tensors[1]).float().mean().item()
    final = result["final"]
    assert final["val/loss"] == pytest.approx(expected, abs=1e-5)
    assert final["val/accuracy"] == pytest.approx(accuracy)
    assert final["train/loss"] == pytest.approx(
        expected, abs=1e-5
    )  # lr ~0: the model did not move


def test_grad_clipping_reports_the_norm_before_clipping():
    ds = data(n=16)
    model, ref = vit(), vit()
    result = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loader(ds, 16),
        device="cpu",
        grad_clip_norm=1e-3,
    ).fit()
    ref.train()
    nn.functional.cross_entropy(ref(ds.tensors[0]), ds.tensors[1]).backward()
    norm = torch.stack([p.grad.norm() for p in ref.parameters()]).norm().item()
    assert (
        result["final"]["train/grad_norm"] == pytest.approx(norm, rel=1e-4)
        and norm > 1e-3
    )
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.1 * p.grad * (1e-3 / norm)
    assert max_diff(model, ref) < 1e-6


def test_validation_runs_in_eval_mode_without_gradients():
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = vit(dropout=0.5)

        def forward(self, x):
            seen.append((self.training, torch.is_grad_enabled()))
            return self.inner(x)

    model = Spy()
    Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loader(data(n=16), 16),
        loader(data(n=8), 8),
        device="cpu",
    ).fit()
    assert seen == [(True, True), (False, False)]


def test_same_seed_same_run_and_another_seed_another_run():
    def run(seed):
        model = vit(drop_path=0.3, dropout=0.1)
        return Trainer(
            model,
            torch.optim.AdamW(model.parameters(), lr=1e-2),
            loader(data(), 16, shuffle=True),
            loader(data(seed=1), 20),
            device="cpu",
            num_epochs=2,
            seed=seed,
        ).fit()["history"]

    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]
    assert strip(run(0)) == strip(run(0))
    assert strip(run(0)) != strip(run(1))


def test_bfloat16_mixed_precision_on_the_cpu():
    model = vit()
    result = Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        loader(data(), 20),
        loader(data(), 50),
        device="cpu",
        use_amp=True,
        amp_dtype="bfloat16",
    ).fit()
    assert all(math.isfinite(v) for v in result["final"].values())
    assert all(
        p.dtype == torch.float32 for p in model.parameters()
    )  # weights stay float32


def test_float16_needs_cuda_and_missing_devices_say_use_auto():
    model = vit()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if not torch.cuda.is_available():
        with pytest.raises(
            DeviceError, match=r"amp_dtype='float16' needs a CUDA device"
        ):
            Trainer(
                model,
                opt,
                loader(data()),
                device="cpu",
                use_amp=True,
                amp_dtype="float16",
            ).fit()
        with pytest.raises(
            DeviceError,
            match=r"device='cuda:0' is not available here \(no CUDA\); use device=",
        ):
            Trainer(model, opt, loader(data()), device="cuda:0").fit()
    with pytest.raises(DeviceError, match=r"use device='auto'"):
        resolve_device(f"cuda:{torch.cuda.device_count() + 3}")


def test_auto_picks_the_best_device_present():
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else "mps"
        if torch.backends.mps.is_available()
        else "cpu"
    )
    assert resolve_device("auto").type == expected


def test_hooks_order_stopping_and_callback_order():
    calls = []

    class Recorder(Callback):
        def __init__(self, name, order=0):
            self.name, self.order = name, order

        def on_train_begin(self, state):
            calls.append((self.name, "train_begin"))

        def on_epoch_begin(self, state):
            calls.append((self.name, "epoch_begin", state.epoch))

        def on_batch_begin(self, state):
            calls.append((self.name, "batch_begin", state.batch))

        def on_batch_end(self, state):
            calls.append((self.name, "batch_end", state.step))

        def on_epoch_end(self, state):
            calls.append((self.name, "epoch_end", state.metrics["epoch"]))
            state.should_stop = state.epoch == 1

        def on_train_end(self, state):
            calls.append((self.name, "train_end"))

    model = vit()
    result = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loader(data(n=32), 16),
        device="cpu",
        num_epochs=5,
        callbacks=[Recorder("late", order=10), Recorder("early")],
    ).fit()
    early = [c[1:] for c in calls if c[0] == "early"]
    assert early == [
        ("train_begin",),
        ("epoch_begin", 0),
        ("batch_begin", 0),
        ("batch_end", 1),
        ("batch_begin", 1),
        ("batch_end", 2),
        ("epoch_end", 1),
        ("epoch_begin", 1),
        ("batch_begin", 0),
        ("batch_end", 3),
        ("batch_begin", 1),
        ("batch_end", 4),
        ("epoch_end", 2),
        ("train_end",),
    ]
    assert [c[0] for c in calls[:2]] == ["early", "late"]
    assert (
        result["stopped_early"] and len(result["history"]) == 2 and result["steps"] == 4
    )


def test_state_dict_loads_with_weights_only(tmp_path):
    model = vit()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    trainer = Trainer(
        model,
        opt,
        loader(data()),
        loader(data()),
        lr_scheduler=sched,
        device="cpu",
        num_epochs=2,
    )
    trainer.fit()
    torch.save(trainer.state_dict(), tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert {
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "step",
        "metrics",
        "history",
        "config",
        "callbacks",
    } <= set(state)
    assert state["epoch"] == 2 and state["step"] == 2 * 7 and len(state["history"]) == 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_epochs=0), r"num_epochs=0; expected a positive integer"),
        (dict(grad_accum_steps=0), r"grad_accum_steps=0; expected a positive integer"),
        (dict(grad_clip_norm=-1), r"grad_clip_norm=-1; expected a finite number > 0"),
        (
            dict(amp_dtype="float8"),
            r"amp_dtype='float8'; expected one of 'bfloat16', 'float16'",
        ),
        (
            dict(callbacks=[print]),
            r"callbacks=<built-in function print>; expected Callback instances",
        ),
        (dict(num_threads=0), r"num_threads=0; expected a positive integer"),
    ],
)
def test_bad_arguments(kwargs, match):
    model = vit()
    with pytest.raises(ValueError, match=match):
        Trainer(
            model, torch.optim.SGD(model.parameters(), lr=0.1), loader(data()), **kwargs
        )


def test_num_threads_hold_while_fitting_and_are_restored():
    seen = []

    class Threads(Callback):
        def on_batch_end(self, state):
            seen.append(torch.get_num_threads())

    model, before = vit(), torch.get_num_threads()
    Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loader(data(n=32)),
        callbacks=[Threads()],
        device="cpu",
        num_threads=2,
    ).fit()
    assert set(seen) == {2} and torch.get_num_threads() == before


def test_auto_threads_one_for_small_models_on_the_cpu_only():
    small, large = nn.Linear(8, 8), nn.Linear(3000, 3000)
    assert resolve_threads("auto", small, "cpu") == 1
    assert resolve_threads("auto", large, "cpu") is None  # PyTorch's default
    assert resolve_threads(3, large, "cpu") == 3
    with pytest.raises(ValueError, match=r"threads='many'; expected a positive"):
        resolve_threads("many", small, "cpu")


@cuda
def test_cuda_float16_with_a_grad_scaler_and_auto():
    model = vit()
    trainer = Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        loader(data(), 20),
        loader(data(), 50),
        device="auto",
        use_amp=True,
        amp_dtype="float16",
    )
    result = trainer.fit()
    assert trainer.device.type == "cuda" and trainer.scaler is not None
    assert all(math.isfinite(v) for v in result["final"].values())


@cuda
def test_cuda_bfloat16_matches_float32_loosely():
    ds = data()
    runs = {}
    for amp in (False, True):
        model = vit()
        runs[amp] = Trainer(
            model,
            torch.optim.AdamW(model.parameters(), lr=1e-3),
            loader(ds, 20),
            loader(ds, 50),
            device="cuda",
            use_amp=amp,
            amp_dtype="bfloat16",
        ).fit()["final"]["val/loss"]
    assert runs[True] == pytest.approx(runs[False], abs=0.05)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 3))


def mlp_trainer(model: nn.Module, **kwargs) -> Trainer:
    "`model` trained with SGD on 100 samples, validated on 40 others."
    return Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loader(data()),
        loader(data(40, seed=1)),
        device="cpu",
        **kwargs,
    )


def test_compiled_training_equals_eager_and_keeps_the_state_dict(tmp_path):
    # 100 samples in batches of 16: the last batch of 4 runs the same compiled graph
    results, models = [], []
    for compiled in (False, True):
        model = mlp()
        trainer = mlp_trainer(model, num_epochs=2, grad_accum_steps=2, compile=compiled)
        results.append(trainer.fit())
        models.append(model)
        keys = list(trainer.state_dict()["model"])
        assert keys == list(mlp().state_dict()), "the model's own keys, no _orig_mod."
    eager, compiled = results
    assert eager["compile_seconds"] == 0 < compiled["compile_seconds"]
    for a, b in zip(eager["history"], compiled["history"]):
        assert math.isclose(a["val/loss"], b["val/loss"], rel_tol=1e-5)
        assert b["seconds"] > 0
    assert max_diff(*models) < 1e-5


def test_compile_must_be_a_bool():
    model = mlp()
    with pytest.raises(ValueError, match="^compile='yes'"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), [], compile="yes")


def test_validate_before_fit_and_on_another_model_with_compile():
    # validating before fit compiles nothing yet; another model's batches are not
    # counted as compiling the trainer's
    model, other = mlp(), mlp()
    trainer = mlp_trainer(model, compile=True)
    before = trainer.validate()
    assert trainer.compile_seconds == 0 and math.isfinite(before["val/loss"])
    trainer.fit()
    spent = trainer.compile_seconds
    trainer.validate(model=other)
    assert trainer.compile_seconds == spent > 0
