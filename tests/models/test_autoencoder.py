"""Autoencoder/DAE: the loss falls on a tiny batch, interface shapes, images; corruptions do what they say."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from pixelforge.data.corruption import build_corruption, gaussian_noise, mask, salt_pepper
from pixelforge.models.autoencoder import Autoencoder, difference_map
from pixelforge.modules.autoencoder import ConvAutoencoder


def tiny_ae(latent_dim: int | None = 8, **kwargs) -> Autoencoder:
    net = ConvAutoencoder(1, 16, channels=(8, 16), latent_dim=latent_dim, latent_channels=2)
    return Autoencoder(net, partial(torch.optim.Adam, lr=3e-3), **kwargs)


def digits_batch(n: int = 16) -> torch.Tensor:
    """Smooth blobs on a black background: something an autoencoder can learn in a few dozen steps."""
    grid = torch.linspace(-1, 1, 16)
    centres = torch.rand(n, 2, generator=torch.Generator().manual_seed(0)) - 0.5
    d2 = (grid.view(1, 1, 16) - centres[:, 0, None, None]) ** 2 + (grid.view(1, 16, 1) - centres[:, 1, None, None]) ** 2
    return (torch.exp(-d2 / 0.1) * 2 - 1).unsqueeze(1)


@pytest.mark.parametrize("corruption", [None, {"kind": "gaussian", "strength": 0.3}])
def test_loss_falls_on_a_tiny_batch(corruption: dict | None) -> None:
    torch.manual_seed(0)
    model = tiny_ae(corruption=corruption)
    x = digits_batch()
    optimizer = model.optimizer(model.parameters())
    losses = []
    for _ in range(60):
        loss = model.loss_fn(model.net(model.corrupt(x)), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5


def test_interface_shapes_and_ranges() -> None:
    x = digits_batch(4)
    vector, spatial = tiny_ae(8).eval(), tiny_ae(None).eval()
    assert vector.latent_shape == (8,) and vector.encode(x).shape == (4, 8)
    assert spatial.latent_shape == (2, 4, 4) and spatial.encode(x).shape == (4, 2, 4, 4)
    for model in (vector, spatial):
        out = model.reconstruct(x)
        assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
        assert model.cond_keys == [] and model.class_counts == []
        assert torch.equal(model.corrupt(x), x)


def test_log_images() -> None:
    model = tiny_ae(2, corruption={"kind": "mask", "strength": 0.5, "patch_size": 4}).eval()
    images = model.log_images({"image": digits_batch(16)}, max_images=9)
    assert list(images) == ["inputs", "corrupted", "reconstructions", "differences", "latent_grid"]
    assert all(v.shape == (9, 1, 16, 16) and v.min() >= -1 and v.max() <= 1 for v in images.values())
    x = digits_batch(2)
    assert torch.allclose(difference_map(x, x), -torch.ones_like(x))


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="'l3'"):
        tiny_ae(loss_type="l3")
    with pytest.raises(ValueError, match="'blur'.*gaussian"):
        build_corruption("blur", 0.1)
    with pytest.raises(ValueError, match="1.5"):
        build_corruption("mask", 1.5)


def test_corruptions_match_their_strength() -> None:
    x = torch.zeros(8, 3, 64, 64)
    g = torch.Generator().manual_seed(0)
    assert abs(gaussian_noise(x, 0.5, generator=g).std().item() - 0.5) < 0.01
    for patch in (1, 4):
        masked = mask(x - 1, 0.3, patch_size=patch, generator=g) != -1
        assert abs(masked.float().mean().item() - 0.3) < 0.03
        assert (masked == masked[:, :1]).all()  # the same pixels in every channel
    salted = salt_pepper(x, 0.2, generator=g)
    assert abs((salted != 0).float().mean().item() - 0.2) < 0.01
    assert abs((salted == 1).float().mean().item() - 0.1) < 0.01 and set(salted.unique().tolist()) == {-1, 0, 1}
    corrupt = build_corruption("salt_pepper", 0.2)
    same = [corrupt(x, generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(*same)
