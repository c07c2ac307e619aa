"""KL autoencoder and VQ model: interface shapes, loss falls, adaptive weight, the discriminator schedule."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from pixelforge.models.autoencoder_kl import AutoencoderKL
from pixelforge.models.first_stage import FirstStageModel, adaptive_weight
from pixelforge.models.vq import VQModel
from pixelforge.modules.distributions import DiagonalGaussian
from pixelforge.modules.patchgan import NLayerDiscriminator

DDCONFIG = {"in_channels": 3, "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 3, "num_groups": 4}


def tiny(kind: str, **kwargs) -> FirstStageModel:
    common = {"ddconfig": kwargs.pop("ddconfig", DDCONFIG), "embed_dim": 2, "image_size": 16,
              "optimizer": partial(torch.optim.Adam, lr=3e-3)}
    if kind == "kl":
        return AutoencoderKL(**common, **kwargs)
    return VQModel(n_embed=16, dead_threshold=0.1, **common, **kwargs)


def blobs(n: int = 8) -> torch.Tensor:
    """Coloured Gaussian blobs on black, 16x16: learnable in a few dozen steps."""
    g = torch.Generator().manual_seed(0)
    grid = torch.linspace(-1, 1, 16)
    centres, colours = torch.rand(n, 2, generator=g) - 0.5, torch.rand(n, 3, 1, 1, generator=g)
    d2 = (grid.view(1, 1, 16) - centres[:, 0, None, None]) ** 2 + (grid.view(1, 16, 1) - centres[:, 1, None, None]) ** 2
    return torch.exp(-d2 / 0.1)[:, None] * colours * 2 - 1


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_interface_shapes(kind: str) -> None:
    model = tiny(kind).eval()
    x = blobs(2)
    assert model.downsample_factor == 2 and model.embed_dim == 2 and model.latent_shape == (2, 8, 8)
    assert model.cond_keys == [] and model.class_counts == []
    z = model.encode_latent(x)
    assert z.shape == (2, *model.latent_shape)
    out = model.decode(z)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    torch.testing.assert_close(model.reconstruct(x), out)
    images = model.log_images({"image": x})
    assert {"inputs", "reconstructions", "differences", "samples"} <= set(images)
    assert all(v.shape == x.shape for v in images.values())


def test_kl_encode_is_a_posterior_and_sampling_is_seeded() -> None:
    model = tiny("kl").eval()
    x = blobs(2)
    posterior = model.encode(x)
    assert isinstance(posterior, DiagonalGaussian)
    torch.testing.assert_close(model.encode_latent(x), posterior.mode())
    a, b = (model.encode_latent(x, sample=True, generator=torch.Generator().manual_seed(1)) for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, posterior.mode())


def test_vq_decode_quantises_its_input() -> None:
    model = tiny("vq").eval()
    z = model.encode_latent(blobs(2))
    quantized, _ = model.quantizer.quantize(z)
    torch.testing.assert_close(model.decode(z), model.decode(quantized))


@pytest.mark.parametrize("kind, patch_size", [("kl", 1), ("vq", 1), ("kl", 2)])
def test_loss_falls_on_a_tiny_batch(kind: str, patch_size: int) -> None:
    torch.manual_seed(0)
    model = tiny(kind, ddconfig={**DDCONFIG, "patch_size": patch_size})
    assert model.latent_shape == (2, 8 // patch_size, 8 // patch_size)
    x = blobs()
    optimizer = model.optimizer([p for p in model.parameters() if p.requires_grad])
    losses = []
    for _ in range(40):
        loss = model.autoencoder_terms(x, adversarial=False)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_adaptive_weight_is_the_gradient_norm_ratio() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    nll, g_loss = (3 * w).sum(), (w**2).sum()  # gradients (3, 3) and (2, 4)
    expected = torch.tensor(18.0).sqrt() / (torch.tensor(20.0).sqrt() + 1e-4)
    torch.testing.assert_close(adaptive_weight(nll, g_loss, w), expected)


def test_perceptual_term_joins_the_loss() -> None:
    class Features(nn.Module):
        def features(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3))

    model = tiny("kl")
    model.perceptual_net, model.perceptual_weight = Features(), 2.0
    terms = model.autoencoder_terms(blobs(2), adversarial=False)
    torch.testing.assert_close(terms["nll"], terms["rec"] + 2.0 * terms["perceptual"])
    with pytest.raises(ValueError, match="exactly the keys"):
        tiny("kl", perceptual={"run": "x"})


@pytest.mark.parametrize(("disc_start", "d_steps"), [(0, 3), (2, 1), (3, 0)])
def test_discriminator_starts_at_disc_start_and_alternates(disc_start: int, d_steps: int) -> None:
    model = tiny("kl", discriminator=NLayerDiscriminator(3, ndf=8, n_layers=1), disc_start=disc_start)
    calls: list[str] = []
    model.autoencoder_terms = record(model.autoencoder_terms, calls, "ae")
    model.discriminator_terms = record(model.discriminator_terms, calls, "d")
    before = [p.clone() for p in model.discriminator.parameters()]
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader([{"image": x} for x in blobs(12)], batch_size=4))
    assert trainer.global_step == 3 + d_steps  # Lightning counts autoencoder and discriminator steps
    assert calls == ["ae"] * disc_start + ["ae", "d"] * d_steps
    moved = any(not torch.equal(a, b) for a, b in zip(before, model.discriminator.parameters(), strict=True))
    assert moved == (d_steps > 0)


def test_train_crop_trains_on_crops_for_its_epochs_then_whole_images() -> None:
    model = tiny("kl", train_crop=8, train_crop_epochs=1)
    seen: list[tuple[int, int]] = []
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    data = DataLoader([{"image": x} for x in blobs(8)], batch_size=4)
    trainer.fit(model, data, data)
    # epoch 0: two cropped training batches, whole-image validation; epoch 1: whole images throughout
    assert seen == [(8, 8), (8, 8), (16, 16), (16, 16), (16, 16), (16, 16)]
    for bad, match in [({"train_crop": 5}, "train_crop 5 must be a multiple of the downsample factor 2 below "
                        "image_size 16"), ({"train_crop": 16}, "train_crop 16"),
                       ({"train_crop": 8, "train_crop_epochs": -1}, "train_crop_epochs must be >= 0")]:
        with pytest.raises(ValueError, match=match):
            tiny("kl", **bad)


def test_validation_logs_reconstruction_metrics_and_rfid() -> None:
    model = tiny("kl")
    model.rfid_features = lambda x: x.mean((2, 3)).double()  # stands in for a classifier's features
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.validate(model, DataLoader([{"image": x} for x in blobs(16)], batch_size=8))
    assert {"val/psnr", "val/ssim", "val/rfid", "val/loss"} <= set(metrics)
    assert model.rfid_cache == {"real": [], "fake": []}


def record(method, calls: list[str], name: str):
    """Wrap ``method`` to append ``name`` to ``calls`` on every call."""
    def wrapped(*args, **kwargs):
        calls.append(name)
        return method(*args, **kwargs)
    return wrapped
