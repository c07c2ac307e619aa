"""Euler ancestral sampling in sigma (variance-exploding) space, k-diffusion style, over a VP-trained denoiser."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pixelforge.diffusion.samplers.base import Sampler
from pixelforge.diffusion.schedule import NoiseSchedule


class EulerAncestralSampler(Sampler):
    """Euler step of the probability-flow ODE in sigma = sqrt((1 - ab)/ab) down to sigma_down, then noise sigma_up.

    The VE state is x_ve = x_vp·sqrt(1 + sigma^2) = x_vp / sqrt(ab); the model is always called on VP inputs, so
    each step maps back with x_vp = sqrt(ab')·x_ve. The Euler update x_ve + d·(sigma_down - sigma) with
    d = (x_ve - x0)/sigma = eps is evaluated as x0 + sigma_down·eps, which never forms x_ve at sigma = inf:
    zero terminal SNR (and the k-diffusion start x_ve = noise·sqrt(1 + sigma_max^2)) stays finite.
    ``eta`` scales sigma_up (0: plain Euler, which coincides with DDIM at eta = 0 on the same timesteps).
    """

    def __init__(self, schedule: NoiseSchedule, prediction_type: str = "eps", steps: int | None = None,
                 eta: float = 1.0, **options: Any) -> None:
        """``options``: the base sampler's (``clip_x0``, ``timestep_spacing``, ``steps_offset``, ...)."""
        super().__init__(schedule, prediction_type, steps, **options)
        self.eta = eta

    def step(
        self, i: int, x: Tensor, x0: Tensor, eps: Tensor, abar: Tensor, prev_x0: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        ab, ab_next = abar[i], abar[i + 1]
        sigma, sigma_next = ((1 - ab) / ab).sqrt(), ((1 - ab_next) / ab_next).sqrt()
        sigma_up = torch.minimum(sigma_next, self.eta * sigma_next * (1 - (sigma_next / sigma) ** 2).sqrt())
        sigma_down = (sigma_next**2 - sigma_up**2).clamp_min(0).sqrt()
        x_ve = x0 + sigma_down * eps
        if self.eta > 0:
            x_ve = self.add_noise(i, x_ve, sigma_up, generator)
        return ab_next.sqrt() * x_ve
