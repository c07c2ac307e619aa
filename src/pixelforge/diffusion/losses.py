"""Diffusion training losses: per-sample L2/L1 with optional min-SNR-gamma weighting, offset noise, t buckets."""

from __future__ import annotations

import torch
from torch import Tensor

from pixelforge.diffusion.schedule import NoiseSchedule, check_prediction_type

LOSS_TYPES = ("l2", "l1")


def min_snr_weight(snr: Tensor, gamma: float, prediction_type: str) -> Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023), expressed for the network's own target.

    The x0-space weight min(SNR, gamma) becomes min(SNR, gamma)/SNR for eps and min(SNR, gamma)/(SNR + 1) for v;
    the eps weight is written min(1, gamma/SNR) so it is 1, not NaN, at a zero-SNR terminal step.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return (gamma / snr).clamp(max=1.0)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if prediction_type == "v" else clipped


def diffusion_loss(
    pred: Tensor,
    target: Tensor,
    t: Tensor,
    schedule: NoiseSchedule,
    loss_type: str = "l2",
    min_snr_gamma: float | None = None,
    prediction_type: str = "eps",
) -> Tensor:
    """Per-sample (B,) mean squared or absolute error, min-SNR-gamma weighted when ``min_snr_gamma`` is set."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
    error = pred.float() - target.float()
    loss = (error.square() if loss_type == "l2" else error.abs()).flatten(1).mean(1)
    if min_snr_gamma is not None:
        loss = loss * min_snr_weight(schedule.snr(t), min_snr_gamma, prediction_type)
    return loss


def offset_noise(
    shape: tuple[int, ...] | torch.Size,
    strength: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Standard noise plus ``strength``·N(0, 1) constant per sample and channel, so models learn global brightness."""
    noise = torch.randn(shape, generator=generator, device=device)
    offset = torch.randn((*shape[:2], *([1] * (len(shape) - 2))), generator=generator, device=device)
    return noise + strength * offset


def timestep_buckets(t: Tensor, num_timesteps: int, n_buckets: int = 4) -> Tensor:
    """Index in [0, n_buckets) of the equal-width range of timesteps holding each t, for per-range loss logging."""
    return (t * n_buckets // num_timesteps).clamp(max=n_buckets - 1)
