"""VAE: closed forms (KL, log-density, reparameterisation, bpd), the loss falls, IS bound vs ELBO, sampling API."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pixelforge.models.vae import VAE, bits_per_dim, gaussian_kl, gaussian_log_prob, reparameterize
from pixelforge.modules.autoencoder import ConvAutoencoder


def tiny_vae(likelihood: str = "bernoulli", channels: int = 1, **kwargs) -> VAE:
    net = ConvAutoencoder(channels, 16, channels=(8, 16), latent_dim=4, latent_moments=2)
    return VAE(net, partial(torch.optim.Adam, lr=3e-3), likelihood=likelihood, **kwargs)


def images(n: int = 16, channels: int = 1) -> torch.Tensor:
    """Black images with one white disc at a random place: binary, and learnable in a few dozen steps."""
    grid = torch.linspace(-1, 1, 16)
    centres = torch.rand(n, 2, 1, 1, generator=torch.Generator().manual_seed(0)) - 0.5
    d2 = (grid.view(1, 1, 16) - centres[:, 0]) ** 2 + (grid.view(1, 16, 1) - centres[:, 1]) ** 2
    return ((d2 < 0.15).float() * 2 - 1).unsqueeze(1).expand(-1, channels, -1, -1)


def train(model: VAE, x: torch.Tensor, steps: int) -> list[float]:
    optimizer = model.optimizer(model.parameters())
    losses = []
    for _ in range(steps):
        terms = model.elbo_terms(x)
        loss = (terms["reconstruction"] + terms["kl"]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_kl_and_log_prob_match_torch_distributions() -> None:
    mean, logvar, z = torch.randn(3, 5, 2, 2), torch.randn(3, 5, 2, 2), torch.randn(3, 5, 2, 2)
    q = Normal(mean, (0.5 * logvar).exp())
    expected_kl = kl_divergence(q, Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(gaussian_kl(mean, logvar), expected_kl, atol=1e-5)
    assert torch.allclose(gaussian_log_prob(z, mean, logvar), q.log_prob(z).flatten(1).sum(1), atol=1e-4)
    assert torch.allclose(gaussian_log_prob(z), Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1), atol=1e-4)


def test_reparameterised_samples_have_the_posterior_moments() -> None:
    mean = torch.tensor([[1.0, -2.0, 0.5]], requires_grad=True)
    logvar = torch.tensor([[0.0, math.log(4.0), math.log(0.25)]], requires_grad=True)
    z = reparameterize(mean.expand(200_000, -1), logvar.expand(200_000, -1), torch.Generator().manual_seed(0))
    assert torch.allclose(z.mean(0), mean[0], atol=0.02)
    assert torch.allclose(z.var(0), logvar[0].exp(), rtol=0.02)
    z.sum().backward()  # differentiable in both parameters
    assert mean.grad is not None and logvar.grad is not None


def test_bits_per_dim_conversions() -> None:
    d = 3 * 32 * 32
    assert bits_per_dim(torch.tensor(d * math.log(2)), d).item() == pytest.approx(1.0)
    # A uniform density on [-1, 1] is ~ uniform over the 256 8-bit levels: 8 bits per dimension.
    assert tiny_vae("gaussian").bits_per_dim(torch.tensor(d * math.log(2)), (3, 32, 32)).item() == pytest.approx(
        8.0, abs=0.01)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_loss_falls_on_a_tiny_batch(likelihood: str) -> None:
    torch.manual_seed(0)
    model = tiny_vae(likelihood)
    losses = train(model, images(), 60)
    start, end = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert end < start - 0.3 * abs(start)


def test_importance_sampled_likelihood_bounds_the_elbo() -> None:
    torch.manual_seed(0)
    model = tiny_vae()
    x = images(32)
    train(model, x, 40)
    model.eval()
    with torch.no_grad():
        elbo = torch.stack([model.elbo_terms(x)["elbo"] for _ in range(50)]).mean(0)
    ll = {k: model.log_likelihood(x, k, torch.Generator().manual_seed(k)).mean().item() for k in (1, 16, 256)}
    assert ll[1] == pytest.approx(elbo.mean().item(), abs=0.05 * abs(ll[1]))  # k = 1 is an ELBO sample
    assert elbo.mean().item() <= ll[16] <= ll[256] + 0.5
    assert ll[256] - ll[16] < ll[16] - ll[1]  # the gain shrinks as k grows


def test_sample_decode_and_log_images() -> None:
    for likelihood in ("bernoulli", "gaussian"):
        model = tiny_vae(likelihood, channels=3).eval()
        x = images(6, channels=3)
        assert model.encode(x).shape == (6, 4) and model.latent_shape == (4,)
        out = model.sample(5, generator=torch.Generator().manual_seed(0))
        assert out.shape == (5, 3, 16, 16) and out.min() >= -1 and out.max() <= 1
        assert torch.equal(out, model.sample(5, generator=torch.Generator().manual_seed(0)))
        assert model.reconstruct(x).shape == x.shape
        logged = model.log_images({"image": x}, max_images=4)
        assert {"inputs", "reconstructions", "differences", "samples", "interpolation_row", "traversal3_row"} <= set(
            logged)
        assert logged["interpolation_row"].shape == (8, 3, 16, 16)
        assert all(v.min() >= -1 and v.max() <= 1 for v in logged.values())
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(2, labels=torch.zeros(2))


def test_kl_warmup_and_bad_options() -> None:
    model = tiny_vae(beta=4.0, kl_warmup_steps=100)
    assert [model.kl_weight(s) for s in (0, 50, 100, 1000)] == [0.0, 2.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="'poisson'"):
        tiny_vae("poisson")
    with pytest.raises(ValueError, match="latent_moments=2"):
        VAE(ConvAutoencoder(1, 16, channels=(8,)), partial(torch.optim.Adam))
