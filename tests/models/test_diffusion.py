"""Pixel diffusion (DDPM): overfits one batch, EMA follows, guided sampling (its scripts: tests/scripts)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from pixelforge.conditioning import Conditioner, Embedder, Labels
from pixelforge.diffusion.schedule import NoiseSchedule
from pixelforge.models.diffusion import DiffusionModel
from pixelforge.modules.unet import UNetModel


def tiny_ddpm(num_classes: int | None = None, ucg_rate: float = 0.1, **kwargs) -> DiffusionModel:
    unet = partial(UNetModel, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                   num_heads=2, num_groups=8)
    labels = Embedder(Labels(num_classes), "label", ucg_rate) if num_classes else None
    return DiffusionModel(unet, NoiseSchedule("linear", 100), partial(torch.optim.Adam, lr=2e-3),
                          conditioner=Conditioner(label=labels), image_size=8, channels=1, ema={"decay": 0.9},
                          **kwargs)


def test_overfits_one_batch_and_ema_follows() -> None:
    torch.manual_seed(0)
    model = tiny_ddpm()
    batch = {"image": torch.rand(8, 1, 8, 8) * 2 - 1}
    optimizer = model.optimizer(model.unet.parameters())
    torch.manual_seed(1)
    start = model.loss(batch, drop=True)[0].mean().item()
    for _ in range(150):
        loss = model.loss(batch, drop=True)[0].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.ema.update(model.trained())
    losses = [model.loss(batch)[0].mean().item() for _ in range(10)]
    assert sum(losses) / 10 < 0.35 * start
    live = next(model.unet.parameters()).detach().clone()
    shadow = next(model.networks(use_ema=True)[0].parameters()).detach().clone()
    assert not torch.equal(live, shadow) and torch.allclose(live, shadow, atol=0.2)
    with model.ema.swap(model.trained()):
        assert torch.equal(next(model.unet.parameters()), shadow)
    assert torch.equal(next(model.unet.parameters()), live)


def test_pixel_diffusion_is_the_identity_first_stage_and_a_derived_unet() -> None:
    model = tiny_ddpm(num_classes=3)
    assert model.downsample_factor == 1 and model.channels == 1
    assert (model.unet.input_blocks[0][0].in_channels, model.unet.num_classes) == (1, (3,))
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.equal(model.decode(model.encode(x)), x)
    assert (model.cond_keys, model.class_counts) == (["label"], [3])
    with pytest.raises(ValueError, match="needs channels"):
        DiffusionModel(partial(UNetModel, model_channels=16), NoiseSchedule("linear", 10), torch.optim.Adam)


def test_guided_sampling_with_labels() -> None:
    torch.manual_seed(0)
    model = tiny_ddpm(num_classes=3)
    for sampler in ("ddpm", "ddim", "dpmpp", "euler_a"):
        out = model.sample(labels=torch.tensor([0, 1, 2]), sampler=sampler, steps=5, scale=2.0)
        assert out.shape == (3, 1, 8, 8) and out.abs().max() <= 1
    same = model.sample(conditions={"label": torch.tensor([0, 1])}, steps=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, model.sample(labels=torch.tensor([0, 1]), steps=3,
                                                  generator=torch.Generator().manual_seed(0)))
    unconditional = tiny_ddpm()
    with pytest.raises(ValueError, match="needs a conditional model"):
        unconditional.sample(2, scale=2.0, steps=3)
    with pytest.raises(ValueError, match="not conditioned on class labels"):
        unconditional.sample(labels=torch.tensor([0, 1]), steps=3)
    noise = torch.randn(2, 1, 8, 8)
    assert torch.equal(unconditional.sample(noise=noise, steps=4), unconditional.sample(noise=noise, steps=4))


def test_log_images_rows() -> None:
    model = tiny_ddpm(num_classes=3)
    batch = {"image": torch.rand(4, 1, 8, 8) * 2 - 1, "label": torch.tensor([0, 1, 2, 0])}
    images = model.log_images(batch)
    assert images["diffusion_row"].shape == (8, 1, 8, 8) and images["samples"].shape == (4, 1, 8, 8)
    assert images["samples_cfg"].shape == (4, 1, 8, 8) and "reconstructions" not in images
    assert 2 <= len(images["denoise_row"]) <= 8


def test_compile_option_compiles_the_trained_network_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[torch.nn.Module] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: compiled.append(self))
    model = tiny_ddpm(compile=True)
    keys = set(model.state_dict())
    model.on_fit_start()
    assert compiled == [model.unet] and set(model.state_dict()) == keys
    tiny_ddpm().on_fit_start()
    assert compiled == [model.unet]
