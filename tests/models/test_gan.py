"""GAN LightningModule: D/G alternation, NaN stop with finite last.ckpt, D learns, sampling API, failure signals."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from fault_injection import PoisonBatch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from pixelforge.callbacks.checkpointing import SaveOnInterrupt
from pixelforge.callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError
from pixelforge.models.gan import GAN
from pixelforge.modules.gan import DCGANDiscriminator, DCGANGenerator


def tiny_gan(num_classes: int | None = None, **kwargs) -> GAN:
    batch_norm = kwargs.get("gp_weight", 0) == 0
    return GAN(DCGANGenerator(8, 1, 8, 4, num_classes),
               DCGANDiscriminator(1, 8, 4, num_classes, batch_norm=batch_norm),
               partial(torch.optim.Adam, lr=None, betas=(0.5, 0.999)), image_size=8, channels=1,
               cond_key="label" if num_classes else None, ema={"decay": 0.9}, num_fixed=8, **kwargs)


def loader(batches: int, batch_size: int = 4) -> DataLoader:
    data = [{"image": torch.rand(1, 8, 8) * 2 - 1, "label": i % 3} for i in range(batches * batch_size)]
    return DataLoader(data, batch_size=batch_size)


def fit(model: GAN, batches: int, tmp_path: Path, callbacks: list | None = None, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=bool(callbacks), callbacks=callbacks or [], default_root_dir=tmp_path,
                        limit_val_batches=0, **{"max_epochs": 1, **trainer_kwargs})
    trainer.fit(model, loader(batches))
    return trainer


def steps_taken(optimizer: torch.optim.Optimizer) -> int:
    """Adam's step count of the optimizer's first parameter."""
    return int(optimizer.state[optimizer.param_groups[0]["params"][0]]["step"])


@pytest.mark.parametrize(("n_critic", "g_steps"), [(1, 6), (3, 2)])
def test_alternates_n_critic_d_steps_per_g_step(n_critic: int, g_steps: int, tmp_path: Path) -> None:
    model = tiny_gan(n_critic=n_critic)
    trainer = fit(model, 6, tmp_path)
    d_opt, g_opt = (o.optimizer for o in model.optimizers())
    assert (steps_taken(d_opt), steps_taken(g_opt)) == (6, g_steps)
    assert trainer.global_step == 6 + g_steps  # max_steps counts D + G steps
    assert int(model.ema.num_updates) == g_steps


@pytest.mark.parametrize("n_critic", [1, 2, 5])
def test_max_steps_two_is_one_d_and_one_g_step(n_critic: int, tmp_path: Path) -> None:
    model = tiny_gan(n_critic=n_critic)
    trainer = fit(model, 6, tmp_path, max_steps=2)
    assert trainer.global_step == 2 and [steps_taken(o.optimizer) for o in model.optimizers()] == [1, 1]


def test_non_finite_loss_stops_with_finite_weights_in_last_ckpt(tmp_path: Path) -> None:
    model = tiny_gan()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor=None, save_last=True)
    callbacks = [checkpoint, SaveOnInterrupt(str(tmp_path / "checkpoints")), NonFiniteGuard(), PoisonBatch(at=5)]
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at global step 10 \(optimizer 0, Adam\)"):
        fit(model, 3, tmp_path, callbacks, max_epochs=4)
    assert model.trainer.current_epoch < 3
    d_opt, g_opt = (o.optimizer for o in model.optimizers())
    assert (steps_taken(d_opt), steps_taken(g_opt)) == (5, 6)  # the poisoned D step skipped, its batch's G step not
    assert all(torch.isfinite(p).all() for p in model.parameters())
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"]) and "fixed_z" in ckpt["state_dict"]
    assert ckpt["global_step"] == model.trainer.global_step


def test_discriminator_loss_falls_when_only_d_trains() -> None:
    torch.manual_seed(0)
    model = tiny_gan()
    real = torch.rand(8, 1, 8, 8) * 2 - 1
    optimizer = torch.optim.Adam(model.discriminator.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        torch.manual_seed(1)  # the same fakes every step
        loss = model.discriminator_step(real, None)["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_penalties_are_logged_and_finite(tmp_path: Path) -> None:
    model = tiny_gan(loss="wasserstein", gp_weight=10.0, r1_gamma=1.0, diffaugment="color,translation,cutout")
    fit(model, 2, tmp_path)
    metrics = {k: v for k, v in model.trainer.logged_metrics.items() if k.startswith("train/")}
    assert {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "train/gp", "train/r1"} <= set(metrics)
    assert all(torch.isfinite(v) for v in metrics.values())


def test_collapse_warns_and_can_stop() -> None:
    model = tiny_gan(collapse_patience=3, stop_on_collapse=True)
    model.trainer = SimpleNamespace(should_stop=False)
    for prob in (0.001, 0.002, 0.5, 0.001, 0.001):  # the healthy step resets the count
        model.watch_collapse(prob)
    assert not model.trainer.should_stop
    with pytest.warns(UserWarning, match="D\\(G\\(z\\)\\) = 0.9990.*3 D steps.*stopping"):
        model.watch_collapse(0.999)
    assert model.trainer.should_stop


def test_sampling_api() -> None:
    unconditional, conditional = tiny_gan(), tiny_gan(num_classes=3)
    assert unconditional.cond_keys == [] and unconditional.class_counts == []
    assert conditional.cond_keys == ["label"] and conditional.class_counts == [3]
    out = unconditional.sample(5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 1, 8, 8) and out.abs().max() <= 1
    assert torch.equal(out, unconditional.sample(5, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.sample(2, labels=torch.tensor([0, 1]))
    assert conditional.sample(labels=torch.tensor([0, 1, 2])).shape == (3, 1, 8, 8)
    assert conditional.sample(4, use_ema=False).shape == (4, 1, 8, 8)  # random classes
    with pytest.raises(ValueError, match="n=2 does not match the 3 labels"):
        conditional.sample(2, labels=torch.tensor([0, 1, 2]))


def test_log_images_fixed_noise_and_class_rows() -> None:
    batch = {"image": torch.rand(4, 1, 8, 8) * 2 - 1, "label": torch.tensor([0, 1, 2, 0])}
    model = tiny_gan().eval()
    first, second = model.log_images(batch, max_images=6), model.log_images(batch, max_images=6)
    assert set(first) == {"inputs", "samples", "samples_live"} and first["samples"].shape == (6, 1, 8, 8)
    assert torch.equal(first["samples"], second["samples"])  # the same z every time
    grid = tiny_gan(num_classes=3).eval().log_images(batch, max_images=6)["class_grid"]
    assert grid.shape == (1, 3, 3 * 10 + 2, 6 * 10 + 2)  # 3 rows (classes) of 6, 2-pixel padding


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="model.optimizer.lr=0.001 is ignored.*g_lr"):
        GAN(DCGANGenerator(8, 1, 8, 4), DCGANDiscriminator(1, 8, 4), partial(torch.optim.Adam, lr=1e-3))
    with pytest.raises(ValueError, match="cond_key='label' needs.*same num_classes.*got None and None"):
        GAN(DCGANGenerator(8, 1, 8, 4), DCGANDiscriminator(1, 8, 4), torch.optim.Adam, cond_key="label")
    with pytest.raises(ValueError, match="unknown GAN loss 'ls'"):
        GAN(DCGANGenerator(8, 1, 8, 4), DCGANDiscriminator(1, 8, 4), torch.optim.Adam, loss="ls")
