"""Diagonal Gaussian over ``B,C,H,W`` latents: the posterior of a KL autoencoder."""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


class DiagonalGaussian:
    """N(mean, diag exp(logvar)); log-variances are clamped to [-30, 20] as in CompVis for numerical safety."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> DiagonalGaussian:
        """Split ``B,2C,H,W`` encoder outputs into mean and log-variance along the channels."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A reparameterised sample ``mean + std * eps`` (differentiable in mean and logvar)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The mean, the deterministic latent of an image."""
        return self.mean

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """Per-sample KL(self || other) in nats, summed over all but the batch dim; ``other`` defaults to N(0, I)."""
        if other is None:
            terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        else:
            terms = (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar \
                + other.logvar
        return 0.5 * terms.flatten(1).sum(1)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample ``-log N(x; mean, var)`` in nats, summed over all but the batch dim."""
        return 0.5 * (LOG_2PI + self.logvar + (x - self.mean).pow(2) / self.var).flatten(1).sum(1)
