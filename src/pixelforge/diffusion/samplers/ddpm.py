"""Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) on any subset of the training timesteps."""

from __future__ import annotations

import torch
from torch import Tensor

from pixelforge.diffusion.samplers.base import Sampler


class DDPMSampler(Sampler):
    """Draws x_{t'} ~ q(x_{t'} | x_t, x0_pred) with the posterior variance of the respaced schedule.

    For a strided subset of steps the betas are respaced as in improved DDPM: beta' = 1 - alpha_bar_t / alpha_bar_t',
    so any step count is a valid Markov chain; with all steps this is exactly Algorithm 2 with sigma^2 = beta-tilde.
    """

    def step(
        self, i: int, x: Tensor, x0: Tensor, eps: Tensor, abar: Tensor, prev_x0: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        ab, ab_next = abar[i], abar[i + 1]
        beta = 1 - ab / ab_next
        mean = (ab_next.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - ab_next) * x) / (1 - ab)
        return self.add_noise(i, mean, (beta * (1 - ab_next) / (1 - ab)).sqrt(), generator)
