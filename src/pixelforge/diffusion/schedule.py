"""Discrete-time variance-preserving noise schedules and the eps / x0 / v parameterisations over them.

With ``alpha = sqrt(alpha_bar)`` and ``sigma = sqrt(1 - alpha_bar)`` the forward process is
``x_t = alpha·x0 + sigma·eps`` and ``v = alpha·eps − sigma·x0`` (Salimans & Ho 2022).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

PREDICTION_TYPES = ("eps", "x0", "v")
SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine")


def check_prediction_type(prediction_type: str) -> None:
    """Raise a ValueError naming ``prediction_type`` unless it is one of PREDICTION_TYPES."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")


def make_betas(kind: str, num_timesteps: int, beta_start: float, beta_end: float, cosine_s: float) -> Tensor:
    """float64 betas of DDPM's linear, Stable Diffusion's scaled-linear or improved DDPM's cosine schedule."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if kind == "cosine":
        s = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alphas_cumprod = torch.cos((s + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown schedule kind {kind!r}; valid: {', '.join(SCHEDULE_KINDS)}")


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Betas whose sqrt(alpha_bar) is shifted and scaled to end at exactly 0, first value kept (Lin et al. 2023)."""
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    alphas_cumprod = ((sqrt_ab - last) * first / (first - last)) ** 2
    alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1 - alphas


def x0_from_prediction(pred: Tensor, xt: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    """The clean-data estimate implied by a prediction at noise level (alpha, sigma), broadcast against ``xt``.

    Eps-prediction leaves x0 undefined where alpha == 0 (zero terminal SNR: x_t is pure noise); there it returns 0,
    finite and NaN-free, and the samplers refuse that combination outright.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "x0":
        return pred
    if prediction_type == "v":
        return alpha * xt - sigma * pred
    x0 = (xt - sigma * pred) / alpha.clamp_min(torch.finfo(alpha.dtype).tiny)
    return torch.where(alpha > 0, x0, torch.zeros_like(x0))


def eps_from_prediction(pred: Tensor, xt: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    """The noise estimate implied by a prediction at noise level (alpha, sigma); sigma > 0 at every timestep."""
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return pred
    if prediction_type == "v":
        return sigma * xt + alpha * pred
    return (xt - alpha * pred) / sigma


class NoiseSchedule(nn.Module):
    """Betas, alpha_bar and posterior coefficients as non-persistent float32 buffers, shared by training and sampling.

    Buffers follow ``.to(device)`` but stay out of checkpoints: the schedule is rebuilt from its config.
    All ``t`` arguments are long tensors of shape (B,); results broadcast over any trailing shape of ``x``.
    """

    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    def __init__(
        self,
        kind: str = "linear",
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 2e-2,
        cosine_s: float = 0.008,
        zero_terminal_snr: bool = False,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.num_timesteps = num_timesteps
        self.beta_start, self.beta_end = beta_start, beta_end
        self.zero_terminal_snr = zero_terminal_snr
        betas = make_betas(kind, num_timesteps, beta_start, beta_end, cosine_s)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        tables = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
            "posterior_variance": posterior_variance,
            # the variance is 0 at t = 0: clip its log to the t = 1 value, as Ho et al.'s code does
            "posterior_log_variance_clipped": torch.cat([posterior_variance[1:2], posterior_variance[1:]]).log(),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
            "posterior_mean_coef2": (1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod),
        }
        for name, value in tables.items():
            self.register_buffer(name, value.float(), persistent=False)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_timesteps={self.num_timesteps}, zero_terminal_snr={self.zero_terminal_snr}"

    @staticmethod
    def gather(table: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """``table[t]`` shaped (B, 1, ..., 1) to broadcast against ``x``."""
        return table[t].reshape(-1, *([1] * (x.dim() - 1)))

    def coefficients(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha, sigma) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) broadcastable against ``x``.

        Taken in x's precision (at least float32) from alpha_bar, so alpha^2 + sigma^2 = 1 to that precision and
        conversions between targets round-trip; float64 inputs get float64 coefficients.
        """
        alphas_cumprod = self.gather(self.alphas_cumprod, t, x).to(torch.promote_types(x.dtype, torch.float32))
        return alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at ``t`` (0 at a zero-SNR terminal step)."""
        alphas_cumprod = self.alphas_cumprod[t]
        return alphas_cumprod / (1 - alphas_cumprod)

    def log_snr(self, t: Tensor) -> Tensor:
        """log SNR at ``t`` (-inf at a zero-SNR terminal step)."""
        alphas_cumprod = self.alphas_cumprod[t]
        return alphas_cumprod.log() - torch.log1p(-alphas_cumprod)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Diffuse clean data to step ``t``: x_t = alpha·x0 + sigma·noise."""
        alpha, sigma = self.coefficients(t, x0)
        return alpha * x0 + sigma * noise

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self.gather(self.posterior_mean_coef1, t, xt) * x0 + self.gather(self.posterior_mean_coef2, t, xt) * xt
        variance = self.gather(self.posterior_variance, t, xt)
        return mean, variance, self.gather(self.posterior_log_variance_clipped, t, xt)

    def to_x0(self, pred: Tensor, xt: Tensor, t: Tensor, prediction_type: str) -> Tensor:
        """Clean-data estimate from a network output of ``prediction_type`` (0 where eps-prediction has none)."""
        return x0_from_prediction(pred, xt, *self.coefficients(t, xt), prediction_type)

    def to_eps(self, pred: Tensor, xt: Tensor, t: Tensor, prediction_type: str) -> Tensor:
        """Noise estimate from a network output of ``prediction_type``."""
        return eps_from_prediction(pred, xt, *self.coefficients(t, xt), prediction_type)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor, prediction_type: str) -> Tensor:
        """What a network of ``prediction_type`` is trained to output for x_t = q_sample(x0, t, noise)."""
        check_prediction_type(prediction_type)
        if prediction_type == "eps":
            return noise
        if prediction_type == "x0":
            return x0
        alpha, sigma = self.coefficients(t, x0)
        return alpha * noise - sigma * x0

    def convert(self, pred: Tensor, xt: Tensor, t: Tensor, source: str, target: str) -> Tensor:
        """Re-express a ``source``-type prediction at (xt, t) as a ``target``-type one."""
        check_prediction_type(source)
        check_prediction_type(target)
        if source == target:
            return pred
        return self.target(self.to_x0(pred, xt, t, source), self.to_eps(pred, xt, t, source), t, target)
