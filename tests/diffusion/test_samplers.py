"""Samplers against the analytic optimal denoiser of Gaussian data, plus their loop contract and reproducibility.

For data x0 ~ N(MU, SD^2 I) the optimal denoiser is E[x0|x_t] = MU + k·(x_t - a·MU), k = a·SD^2 / (a^2·SD^2 + s^2),
and the probability-flow ODE maps x_T to x_0 = MU + SD·(x_T - a_T·MU) / sqrt(a_T^2·SD^2 + s_T^2) exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pixelforge.diffusion.samplers import SAMPLERS, DDIMSampler, Denoiser, build_sampler
from pixelforge.diffusion.schedule import NoiseSchedule

MU, SD = 0.5, 0.3
LINEAR = NoiseSchedule("linear")
ZERO_SNR = NoiseSchedule("scaled_linear", beta_start=0.00085, beta_end=0.012, zero_terminal_snr=True)
COSINE_ZERO_SNR = NoiseSchedule("cosine", zero_terminal_snr=True)


def gaussian_denoiser(schedule: NoiseSchedule, prediction_type: str) -> Denoiser:
    """The Bayes-optimal network of ``prediction_type`` for N(MU, SD^2) data."""

    def model(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        ab = schedule.alphas_cumprod[t].double().reshape(-1, *([1] * (x.dim() - 1)))
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x0 = MU + a * SD**2 / (ab * SD**2 + 1 - ab) * (x - a * MU)
        eps = (x - a * x0) / s
        return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[prediction_type].to(x.dtype)

    return model


def flow_map(schedule: NoiseSchedule, noise: torch.Tensor) -> torch.Tensor:
    """Where the exact probability-flow ODE takes ``noise`` at t = T - 1."""
    ab = schedule.alphas_cumprod[-1].double()
    return (MU + SD * (noise.double() - ab.sqrt() * MU) / (ab * SD**2 + 1 - ab).sqrt()).float()


def normal(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def run(name: str, schedule: NoiseSchedule, prediction_type: str, steps: int, noise: torch.Tensor,
        seed: int = 1, **kwargs: Any) -> torch.Tensor:
    sampler = build_sampler(name, schedule, prediction_type, steps, **kwargs)
    return sampler.sample(gaussian_denoiser(schedule, prediction_type), noise,
                          generator=torch.Generator().manual_seed(seed))


# ---- exactness against the closed form ---------------------------------------------------------------------------
def rms_error(name: str, schedule: NoiseSchedule, prediction_type: str, steps: int, **kwargs: Any) -> float:
    """Root-mean-square distance of a deterministic sampler's outputs from the exact ODE solution."""
    noise = normal(256, 2)
    return (run(name, schedule, prediction_type, steps, noise, **kwargs) - flow_map(schedule, noise)).pow(2).mean() \
        .sqrt().item()


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
@pytest.mark.parametrize(("name", "steps", "tol"), [
    ("ddim", 100, 0.02),      # measured 0.014
    ("ddim", 200, 0.01),      # 0.0072
    ("dpmpp", 50, 0.0075),    # 0.0050
    ("dpmpp", 100, 5e-4),     # 0.00032
])
def test_deterministic_samplers_follow_the_flow_map(name: str, steps: int, tol: float, prediction_type: str) -> None:
    assert rms_error(name, LINEAR, prediction_type, steps) < tol


@pytest.mark.parametrize("prediction_type", ["x0", "v"])
@pytest.mark.parametrize(("name", "steps", "tol"), [
    ("ddim", 100, 0.01),      # measured 0.0072
    ("dpmpp", 25, 0.007),     # 0.0044
    ("dpmpp", 50, 2e-4),      # 8e-5
])
def test_flow_map_at_zero_terminal_snr(name: str, steps: int, tol: float, prediction_type: str) -> None:
    """From alpha_bar = 0 exactly (where x_t is pure noise) the first step must not lose accuracy."""
    assert rms_error(name, COSINE_ZERO_SNR, prediction_type, steps) < tol


def test_convergence_orders() -> None:
    """DDIM is first order (error halves as steps double); DPM-Solver++(2M) falls at least 4x per doubling."""
    errors = {(name, steps): rms_error(name, LINEAR, "v", steps) for name in ("ddim", "dpmpp") for steps in (50, 100)}
    assert 1.8 < errors["ddim", 50] / errors["ddim", 100] < 2.2
    assert errors["dpmpp", 50] / errors["dpmpp", 100] > 4
    assert errors["dpmpp", 50] < errors["ddim", 50] / 4


def assert_moments(x: torch.Tensor, mean_tol: float, std_tol: float) -> None:
    assert torch.isfinite(x).all()
    assert abs(x.mean().item() - MU) < mean_tol, f"mean {x.mean().item():.4f} vs {MU}"
    assert abs(x.std().item() - SD) < std_tol, f"std {x.std().item():.4f} vs {SD}"


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
@pytest.mark.parametrize(("name", "steps", "kwargs", "std_tol"), [
    ("ddim", 100, {}, 0.02),         # measured std error -0.012
    ("dpmpp", 50, {}, 0.02),         # -0.004
    ("ddpm", 1000, {}, 0.02),        # -0.006
    ("ddpm", 250, {}, 0.02),         # -0.013
    ("euler_a", 250, {}, 0.02),      # -0.013 (the same chain as ddpm, 250)
    ("ddim", 250, {"eta": 1.0}, 0.02),
    ("dpmpp", 10, {}, 0.15),         # -0.105: the last jump, from t = 99 to clean data, is first order
    ("ddim", 10, {}, 0.15),          # -0.115
])
def test_sample_moments(name: str, steps: int, kwargs: dict, std_tol: float, prediction_type: str) -> None:
    assert_moments(run(name, LINEAR, prediction_type, steps, normal(4000, 2), **kwargs), 0.02, std_tol)


@pytest.mark.parametrize(("name", "steps", "std_tol"), [("ddim", 100, 0.03), ("dpmpp", 50, 0.03),
                                                        ("ddpm", 250, 0.03), ("euler_a", 250, 0.03)])
def test_sample_moments_at_zero_terminal_snr(name: str, steps: int, std_tol: float) -> None:
    assert_moments(run(name, ZERO_SNR, "v", steps, normal(4000, 2)), 0.02, std_tol)


# ---- equivalences between samplers -------------------------------------------------------------------------------
def test_ancestral_samplers_coincide() -> None:
    """DDPM's respaced posterior, DDIM at eta = 1 and Euler ancestral are the same chain: same noise, same result."""
    noise = normal(64, 3, 2, 2)
    ddpm = run("ddpm", LINEAR, "eps", 30, noise)
    torch.testing.assert_close(run("ddim", LINEAR, "eps", 30, noise, eta=1.0), ddpm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run("euler_a", LINEAR, "eps", 30, noise), ddpm, atol=1e-5, rtol=1e-5)
    for eta in (0.0, 0.5):
        torch.testing.assert_close(run("euler_a", LINEAR, "v", 30, noise, eta=eta),
                                   run("ddim", LINEAR, "v", 30, noise, eta=eta), atol=1e-5, rtol=1e-5)


def test_prediction_types_give_the_same_samples() -> None:
    noise = normal(64, 2)
    for name in SAMPLERS:
        eps, x0, v = (run(name, LINEAR, p, 20, noise) for p in ("eps", "x0", "v"))
        torch.testing.assert_close(x0, eps, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(v, eps, atol=1e-4, rtol=1e-4)


# ---- loop contract -----------------------------------------------------------------------------------------------
def test_timesteps_are_trailing() -> None:
    assert DDIMSampler(LINEAR, steps=10).timesteps().tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert torch.equal(DDIMSampler(LINEAR).timesteps(), torch.arange(999, -1, -1))
    for steps in (1, 7, 333, 999):
        ts = DDIMSampler(LINEAR, steps=steps).timesteps()
        assert len(ts) == steps and ts[0] == 999 and (ts[1:] < ts[:-1]).all() and ts[-1] >= 0


def test_invalid_settings_are_named() -> None:
    with pytest.raises(ValueError, match=r"steps=1001.*num_timesteps=1000"):
        build_sampler("ddim", LINEAR, "eps", 1001)
    with pytest.raises(ValueError, match=r"steps=0"):
        build_sampler("dpmpp", LINEAR, "eps", 0)
    with pytest.raises(ValueError, match=r"'lms'.*ddpm, ddim, dpmpp, euler_a, plms"):
        build_sampler("lms", LINEAR, "eps", 10)
    with pytest.raises(ValueError, match=r"'score'"):
        build_sampler("ddim", LINEAR, "score", 10)
    with pytest.raises(ValueError, match=r"zero-terminal-SNR"):
        build_sampler("ddim", ZERO_SNR, "eps", 10)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_and_model_calls(name: str) -> None:
    noise, cond, calls, seen = normal(3, 2, 4, 4), {"label": torch.tensor([1, 2, 3])}, [], []

    def model(x: torch.Tensor, t: torch.Tensor, c: Any) -> torch.Tensor:
        assert c is cond and x.shape == noise.shape and t.shape == (3,) and t.dtype == torch.long
        calls.append(t[0].item())
        return torch.zeros_like(x)

    sampler = build_sampler(name, LINEAR, "eps", 8)
    out = sampler.sample(model, noise, cond=cond, callback=lambda i, x, x0: seen.append((i, x.shape, x0.shape)),
                         progress=True)
    assert out.shape == noise.shape
    visited = sampler.timesteps().tolist()
    if name == "plms":  # its first step calls the network a second time, at the next timestep
        visited.insert(1, visited[1])
    assert calls == visited
    assert seen == [(i, noise.shape, noise.shape) for i in range(8)]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_reproducible_with_a_seeded_generator(name: str) -> None:
    noise = normal(16, 2)
    first, again = run(name, LINEAR, "eps", 10, noise, seed=3), run(name, LINEAR, "eps", 10, noise, seed=3)
    assert torch.equal(first, again)
    stochastic = name in ("ddpm", "euler_a")
    assert torch.equal(first, run(name, LINEAR, "eps", 10, noise, seed=4)) != stochastic


def test_global_rng_without_generator() -> None:
    sampler, model, noise = build_sampler("ddpm", LINEAR, "eps", 10), gaussian_denoiser(LINEAR, "eps"), normal(8, 2)
    torch.manual_seed(5)
    first = sampler.sample(model, noise)
    torch.manual_seed(5)
    assert torch.equal(sampler.sample(model, noise), first)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_no_host_sync_and_no_fixed_device(name: str) -> None:
    """On the meta device any .item(), bool() or hard-coded device inside the loop would raise."""
    schedule = NoiseSchedule("cosine", zero_terminal_snr=True)
    sampler = build_sampler(name, schedule, "v", 4)
    schedule.to("meta")
    out = sampler.sample(lambda x, t, cond: 0.5 * x, torch.empty(2, 3, 4, 4, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 3, 4, 4)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_clip_x0_keeps_estimates_in_range(name: str) -> None:
    schedule = NoiseSchedule("linear", 100)
    seen: list[torch.Tensor] = []

    def overshooting(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        return -5 * x  # an eps guess whose x0 estimate leaves [-1, 1]

    noise = normal(64, 2)
    sampler = build_sampler(name, schedule, "eps", 10, clip_x0=1.0)
    out = sampler.sample(overshooting, noise, callback=lambda i, x, x0: seen.append(x0),
                         generator=torch.Generator().manual_seed(0))
    assert all(x0.abs().max() <= 1.0 for x0 in seen) and out.abs().max() <= 1.0 + 1e-5
    unclipped = build_sampler(name, schedule, "eps", 10).sample(overshooting, noise,
                                                                  generator=torch.Generator().manual_seed(0))
    assert unclipped.abs().max() > 1.5
