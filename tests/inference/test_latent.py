"""Latent-space helpers: PCA projection, Gaussian fit, interpolation and attribute vectors."""

from __future__ import annotations

import pytest
import torch

from pixelforge.inference.latent import attribute_vector, fit_gaussian, interpolate, project_2d


def test_project_2d_keeps_2d_latents_and_finds_principal_axes() -> None:
    z2 = torch.randn(50, 2)
    points, explained = project_2d(z2)
    assert torch.equal(points, z2) and sum(explained) == pytest.approx(1)
    # variance lies almost entirely along two known directions of a 6-D space
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(6, 6, generator=g))[0][:, :2]
    z = torch.randn(400, 2, generator=g) * torch.tensor([5.0, 2.0]) @ basis.T + 0.01 * torch.randn(400, 6, generator=g)
    points, explained = project_2d(z.view(400, 1, 2, 3))  # spatial latents are flattened
    assert points.shape == (400, 2) and explained[0] > explained[1] and sum(explained) > 0.99
    assert points[:, 0].var() == pytest.approx(25, rel=0.2)


def test_fit_gaussian_interpolate_and_attribute_vector() -> None:
    z = torch.randn(2000, 3) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([1.0, -1.0, 0.0])
    prior = fit_gaussian(z)
    assert torch.allclose(prior.mean.float(), z.mean(0), atol=1e-5)
    assert torch.allclose(prior.covariance_matrix.diagonal().float(), z.var(0), rtol=1e-3)
    line = interpolate(torch.zeros(2, 2), torch.ones(2, 2), 5)
    assert line.shape == (5, 2, 2) and torch.allclose(line[:, 0, 0], torch.linspace(0, 1, 5))
    labels = torch.arange(10).repeat(3)
    z = torch.randn(30, 4) * 0.01 + (labels == 3).float()[:, None] * torch.tensor([0.0, 2.0, 0.0, 0.0])
    assert torch.allclose(attribute_vector(z, labels == 3), torch.tensor([0.0, 2.0, 0.0, 0.0]), atol=0.02)
    with pytest.raises(ValueError, match="with and without"):
        attribute_vector(z, labels == 11)
