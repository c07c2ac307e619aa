"""Noise schedules against their closed forms: betas, alpha_bar, zero terminal SNR, q_sample, posterior, targets."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pixelforge.diffusion.schedule import PREDICTION_TYPES, SCHEDULE_KINDS, NoiseSchedule

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012}


def schedules() -> list[NoiseSchedule]:
    """One schedule of each kind, with and without zero terminal SNR."""
    return [NoiseSchedule(kind, zero_terminal_snr=zero, **(SD_BETAS if kind == "scaled_linear" else {}))
            for kind in SCHEDULE_KINDS for zero in (False, True)]


def test_linear_betas_endpoints() -> None:
    schedule = NoiseSchedule("linear", num_timesteps=1000)
    assert schedule.betas.shape == (1000,)
    assert schedule.betas[0].item() == pytest.approx(1e-4)
    assert schedule.betas[-1].item() == pytest.approx(2e-2)
    assert torch.allclose(schedule.alphas_cumprod, torch.cumprod(1 - schedule.betas.double(), 0).float())


def test_scaled_linear_betas() -> None:
    schedule = NoiseSchedule("scaled_linear", num_timesteps=1000, **SD_BETAS)
    expected = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(schedule.betas, expected.float())


def test_cosine_alpha_bar() -> None:
    T, s = 1000, 0.008
    schedule = NoiseSchedule("cosine", num_timesteps=T, cosine_s=s)
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    expected = torch.tensor([f[t + 1] / f[0] for t in range(T - 1)])  # the last beta is clipped at 0.999
    torch.testing.assert_close(schedule.alphas_cumprod[:-1], expected, rtol=1e-5, atol=1e-7)
    assert schedule.betas.max().item() == pytest.approx(0.999)


@pytest.mark.parametrize("schedule", schedules(), ids=lambda s: f"{s.kind}-ztsnr{s.zero_terminal_snr}")
def test_schedule_is_monotonic_and_consistent(schedule: NoiseSchedule) -> None:
    ab = schedule.alphas_cumprod
    assert (ab[1:] < ab[:-1]).all() and ab[0] < 1 and ab[-1] >= 0
    assert ((schedule.betas > 0) & (schedule.betas <= 1)).all()
    torch.testing.assert_close(schedule.alphas_cumprod_prev[1:], ab[:-1])
    torch.testing.assert_close(schedule.sqrt_alphas_cumprod**2 + schedule.sqrt_one_minus_alphas_cumprod**2,
                               torch.ones_like(ab))
    t = torch.arange(schedule.num_timesteps)
    torch.testing.assert_close(schedule.snr(t), ab / (1 - ab))
    assert not schedule.posterior_variance.isnan().any() and not schedule.posterior_log_variance_clipped.isinf().any()


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_zero_terminal_snr(kind: str) -> None:
    kwargs = SD_BETAS if kind == "scaled_linear" else {}
    plain, zero = NoiseSchedule(kind, **kwargs), NoiseSchedule(kind, zero_terminal_snr=True, **kwargs)
    assert zero.alphas_cumprod[-1].item() == 0 and zero.betas[-1].item() == 1
    assert zero.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-6)
    # Lin et al.'s Algorithm 1 is an affine map of sqrt(alpha_bar)
    old = plain.sqrt_alphas_cumprod.double()
    expected = (old - old[-1]) * old[0] / (old[0] - old[-1])
    torch.testing.assert_close(zero.sqrt_alphas_cumprod.double(), expected, atol=1e-6, rtol=1e-5)
    last = torch.tensor([zero.num_timesteps - 1])
    assert zero.snr(last).item() == 0 and zero.log_snr(last).item() == -math.inf


def test_unknown_kind_names_it_and_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'quadratic'.*linear, scaled_linear, cosine"):
        NoiseSchedule("quadratic")


def test_buffers_are_float32_non_persistent() -> None:
    schedule = NoiseSchedule()
    assert schedule.state_dict() == {}
    buffers = dict(schedule.named_buffers())
    assert len(buffers) == 10 and all(b.dtype == torch.float32 for b in buffers.values())


@pytest.mark.parametrize("shape", [(6, 3, 4, 4), (6, 5)])
def test_q_sample_broadcasts_the_closed_form(shape: tuple[int, ...]) -> None:
    schedule = NoiseSchedule()
    x0, noise = torch.randn(shape), torch.randn(shape)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    expected = torch.stack([schedule.alphas_cumprod[k].sqrt() * x0[i] + (1 - schedule.alphas_cumprod[k]).sqrt()
                            * noise[i] for i, k in enumerate(t)])
    torch.testing.assert_close(schedule.q_sample(x0, t, noise), expected)


def test_q_sample_moments() -> None:
    schedule = NoiseSchedule()
    x0 = torch.full((20000, 1), 0.7)
    t = torch.full((20000,), 300)
    xt = schedule.q_sample(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)))
    ab = schedule.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(ab**0.5 * 0.7, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - ab, abs=0.02)


def test_posterior_is_the_gaussian_product() -> None:
    """q(x_{t-1}|x_t, x0) ∝ N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(ab_{t-1}) x0, 1 - ab_{t-1})."""
    schedule = NoiseSchedule("cosine")
    betas = schedule.betas.double()
    ab = torch.cumprod(1 - betas, 0)
    t = torch.tensor([1, 2, 50, 500, 900, 999])
    x0, xt = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    beta, ab_prev = betas[t, None], ab[t - 1, None]
    precision = (1 - beta) / beta + 1 / (1 - ab_prev)
    mean = ((1 - beta).sqrt() * xt / beta + ab_prev.sqrt() * x0 / (1 - ab_prev)) / precision
    got_mean, got_var, got_log_var = schedule.q_posterior(x0, xt, t)
    torch.testing.assert_close(got_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_var.double(), 1 / precision, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(got_log_var, got_var.log())
    mean0, var0, log_var0 = schedule.q_posterior(x0[:1], xt[:1], torch.tensor([0]))
    torch.testing.assert_close(mean0, x0[:1], rtol=1e-6, atol=1e-6)
    assert var0.item() == 0 and log_var0.item() == schedule.posterior_log_variance_clipped[1].item()


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
@pytest.mark.parametrize(("source", "target"), list(itertools.product(PREDICTION_TYPES, PREDICTION_TYPES)))
def test_conversions_round_trip(source: str, target: str, zero_terminal_snr: bool) -> None:
    """Exact algebra (float64) at every t; eps says nothing about x0 at a zero-SNR terminal step, so skip it there."""
    schedule = NoiseSchedule("linear", zero_terminal_snr=zero_terminal_snr)
    t = torch.arange(999 if zero_terminal_snr and "eps" in (source, target) else 1000)
    x0, noise = torch.randn(len(t), 2, 3, dtype=torch.float64), torch.randn(len(t), 2, 3, dtype=torch.float64)
    assert_round_trip(schedule, x0, noise, t, source, target, tol=1e-5)


def test_conversions_round_trip_in_float32() -> None:
    """float32 loses ~1/sqrt(alpha_bar) ulps going through x0 from eps (x160 at t = 999): 1e-4 holds everywhere."""
    schedule = NoiseSchedule("linear")
    t = torch.arange(1000)
    x0, noise = torch.randn(1000, 2, 3), torch.randn(1000, 2, 3)
    for source, target in itertools.product(PREDICTION_TYPES, PREDICTION_TYPES):
        assert_round_trip(schedule, x0, noise, t, source, target, tol=1e-4)


def assert_round_trip(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, source: str,
                      target: str, tol: float) -> None:
    """convert(source -> target) gives the target's training target, converting back gives the input again."""
    xt = schedule.q_sample(x0, t, noise)
    pred = schedule.target(x0, noise, t, source)
    converted = schedule.convert(pred, xt, t, source, target)
    torch.testing.assert_close(converted, schedule.target(x0, noise, t, target), rtol=tol, atol=tol)
    torch.testing.assert_close(schedule.convert(converted, xt, t, target, source), pred, rtol=tol, atol=tol)
    torch.testing.assert_close(schedule.to_x0(pred, xt, t, source), x0, rtol=tol, atol=tol)
    torch.testing.assert_close(schedule.to_eps(pred, xt, t, source), noise, rtol=tol, atol=tol)


def test_v_target_is_salimans_and_ho() -> None:
    schedule = NoiseSchedule()
    x0, noise, t = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 10, 500, 999])
    a, s = schedule.sqrt_alphas_cumprod[t, None], schedule.sqrt_one_minus_alphas_cumprod[t, None]
    torch.testing.assert_close(schedule.target(x0, noise, t, "v"), a * noise - s * x0)


def test_zero_snr_terminal_step_stays_finite() -> None:
    """At alpha_bar = 0, x0 from v or x0 is exact; eps carries no information about x0, which comes back as 0."""
    schedule = NoiseSchedule("cosine", zero_terminal_snr=True)
    t = torch.full((8,), schedule.num_timesteps - 1)
    x0, noise = torch.randn(8, 4), torch.randn(8, 4)
    xt = schedule.q_sample(x0, t, noise)
    torch.testing.assert_close(xt, noise)
    torch.testing.assert_close(schedule.to_x0(schedule.target(x0, noise, t, "v"), xt, t, "v"), x0)
    assert torch.equal(schedule.to_x0(noise, xt, t, "eps"), torch.zeros_like(x0))
    assert torch.isfinite(schedule.convert(noise, xt, t, "eps", "v")).all()


def test_invalid_prediction_type_is_named() -> None:
    schedule = NoiseSchedule()
    x, t = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    for call in (lambda: schedule.to_x0(x, x, t, "score"), lambda: schedule.target(x, x, t, "score"),
                 lambda: schedule.convert(x, x, t, "eps", "score")):
        with pytest.raises(ValueError, match=r"'score'.*eps, x0, v"):
            call()
