"""DPM-Solver++(2M) (Lu et al. 2022): second-order multistep solver of the data-prediction ODE in log-SNR time."""

from __future__ import annotations

import torch
from torch import Tensor

from pixelforge.diffusion.samplers.base import Sampler


def half_log_snr(alphas_cumprod: Tensor) -> Tensor:
    """lambda = log(alpha / sigma): -inf at alpha_bar = 0, +inf at alpha_bar = 1."""
    return 0.5 * (alphas_cumprod.log() - torch.log1p(-alphas_cumprod))


class DPMSolverPP2MSampler(Sampler):
    """x_t' = (sigma'/sigma)·x - alpha'·(e^{-h} - 1)·D, h = lambda' - lambda, D the multistep data estimate.

    D = x0 + (x0 - x0_prev)·h / (2·h_prev) (Algorithm 2); the first step has no history and the final step, which
    lands on sigma = 0 (h = inf), is first order (D = x0), i.e. lower-order-final always holds and the output is the
    last data estimate. At zero terminal SNR the first h_prev is inf and the correction vanishes smoothly.
    """

    def step(
        self, i: int, x: Tensor, x0: Tensor, eps: Tensor, abar: Tensor, prev_x0: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        ab, ab_next = abar[i], abar[i + 1]
        lam, lam_next = half_log_snr(ab), half_log_snr(ab_next)
        h = lam_next - lam
        data = x0
        if prev_x0 is not None and i < self.steps - 1:
            h_prev = lam - half_log_snr(abar[i - 1])
            data = x0 + (x0 - prev_x0) * (h / (2 * h_prev))
        return ((1 - ab_next) / (1 - ab)).sqrt() * x - ab_next.sqrt() * torch.expm1(-h) * data
