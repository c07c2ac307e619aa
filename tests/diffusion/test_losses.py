"""Diffusion losses: per-sample reduction, min-SNR-gamma weights, offset noise and timestep buckets."""

from __future__ import annotations

import pytest
import torch

from pixelforge.diffusion.losses import diffusion_loss, min_snr_weight, offset_noise, timestep_buckets
from pixelforge.diffusion.schedule import PREDICTION_TYPES, NoiseSchedule


def test_per_sample_l2_and_l1() -> None:
    schedule = NoiseSchedule()
    pred, target, t = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4), torch.randint(0, 1000, (5,))
    l2 = diffusion_loss(pred, target, t, schedule, "l2")
    l1 = diffusion_loss(pred, target, t, schedule, "l1")
    assert l2.shape == l1.shape == (5,)
    torch.testing.assert_close(l2, ((pred - target) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(l1, (pred - target).abs().mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match=r"'huber'.*l2, l1"):
        diffusion_loss(pred, target, t, schedule, "huber")


def test_min_snr_weights_follow_hang_et_al() -> None:
    schedule = NoiseSchedule()
    t = torch.tensor([0, 100, 300, 600, 999])
    snr, gamma = schedule.snr(t), 5.0
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    torch.testing.assert_close(min_snr_weight(snr, gamma, "eps"), clipped / snr)
    torch.testing.assert_close(min_snr_weight(snr, gamma, "v"), clipped / (snr + 1))
    torch.testing.assert_close(min_snr_weight(snr, gamma, "x0"), clipped)
    pred, target = torch.randn(5, 8), torch.randn(5, 8)
    torch.testing.assert_close(diffusion_loss(pred, target, t, schedule, "l2", gamma, "v"),
                               ((pred - target) ** 2).mean(1) * clipped / (snr + 1))


def test_min_snr_weighting_is_the_same_x0_loss_for_every_target() -> None:
    """For one x0 error, the weighted eps, x0 and v losses all equal min(SNR, gamma)·|x0 error|^2."""
    schedule = NoiseSchedule("cosine")
    t = torch.tensor([1, 50, 200, 500, 800, 990])
    x0, noise = torch.randn(6, 2, 3, 3, dtype=torch.float64), torch.randn(6, 2, 3, 3, dtype=torch.float64)
    xt = schedule.q_sample(x0, t, noise)
    x0_pred = x0 + 0.1 * torch.randn_like(x0)
    losses = [diffusion_loss(schedule.convert(x0_pred, xt, t, "x0", p), schedule.target(x0, noise, t, p), t,
                             schedule, "l2", 5.0, p) for p in PREDICTION_TYPES]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=0)
    torch.testing.assert_close(losses[2], losses[1], rtol=1e-4, atol=0)


def test_min_snr_weights_are_finite_at_zero_terminal_snr() -> None:
    schedule = NoiseSchedule("linear", zero_terminal_snr=True)
    snr = schedule.snr(torch.tensor([999]))
    assert [min_snr_weight(snr, 5.0, p).item() for p in PREDICTION_TYPES] == [1.0, 0.0, 0.0]


def test_offset_noise_adds_a_constant_per_channel() -> None:
    shape = (64, 3, 8, 8)
    plain = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    noise = offset_noise(shape, 0.5, generator=torch.Generator().manual_seed(0))
    assert noise.shape == shape
    offset = noise - plain
    torch.testing.assert_close(offset, offset[:, :, :1, :1].expand(shape))
    assert offset[:, :, 0, 0].std().item() == pytest.approx(0.5, rel=0.15)
    assert torch.equal(offset_noise(shape, 0.0, generator=torch.Generator().manual_seed(0)), plain)


def test_timestep_buckets() -> None:
    t = torch.tensor([0, 249, 250, 499, 500, 749, 750, 999])
    assert timestep_buckets(t, 1000).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert timestep_buckets(torch.arange(10), 10, 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
