"""DDIM sampling (Song et al. 2021): deterministic at eta = 0, the ancestral DDPM chain at eta = 1."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pixelforge.diffusion.samplers.base import Sampler
from pixelforge.diffusion.schedule import NoiseSchedule


class DDIMSampler(Sampler):
    """x_{t'} = sqrt(ab')·x0 + sqrt(1 - ab' - s^2)·eps + s·z, s = eta·(DDPM posterior std between t and t')."""

    def __init__(self, schedule: NoiseSchedule, prediction_type: str = "eps", steps: int | None = None,
                 eta: float = 0.0, **options: Any) -> None:
        """``options``: the base sampler's (``clip_x0``, ``timestep_spacing``, ``steps_offset``, ...)."""
        super().__init__(schedule, prediction_type, steps, **options)
        self.eta = eta

    def step(
        self, i: int, x: Tensor, x0: Tensor, eps: Tensor, abar: Tensor, prev_x0: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        ab, ab_next = abar[i], abar[i + 1]
        variance = self.eta**2 * (1 - ab_next) / (1 - ab) * (1 - ab / ab_next)
        x = ab_next.sqrt() * x0 + (1 - ab_next - variance).clamp_min(0).sqrt() * eps
        return self.add_noise(i, x, variance.sqrt(), generator) if self.eta > 0 else x
