"""The samplers land where diffusers' schedulers land from the same noise, for each timestep spacing, and PLMS
(CompVis's ``--plms``) where diffusers' PNDM lands; the denoiser is the exact one for Gaussian data."""

from __future__ import annotations

import pytest
import torch
from test_samplers import COSINE_ZERO_SNR, LINEAR, gaussian_denoiser, normal, rms_error

from pixelforge.diffusion.samplers import build_sampler
from pixelforge.diffusion.schedule import NoiseSchedule

diffusers = pytest.importorskip("diffusers")
SD = NoiseSchedule("scaled_linear", beta_start=0.00085, beta_end=0.012)  # Stable Diffusion's betas
SD_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
# CompVis's SD setting first. diffusers' DDIM steps to t - T // steps whatever the spacing, which is the next
# visited timestep for leading and trailing but not for linspace: linspace is checked with DPM-Solver++.
SPACINGS = [("leading", 1, False), ("trailing", 0, True)]


def diffusers_run(scheduler, steps: int, prediction_type: str, noise: torch.Tensor) -> torch.Tensor:
    """diffusers' loop: the scheduler's timesteps, one model call each."""
    model = gaussian_denoiser(SD, prediction_type)
    scheduler.set_timesteps(steps)
    x = noise
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.long().expand(len(x)), None), t, x).prev_sample
    return x


def ours(name: str, steps: int, prediction_type: str, noise: torch.Tensor, **options) -> torch.Tensor:
    sampler = build_sampler(name, SD, prediction_type, steps, **options)
    return sampler.sample(gaussian_denoiser(SD, prediction_type), noise)


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize(("spacing", "offset", "alpha_to_one"), SPACINGS)
def test_ddim_matches_diffusers_for_every_spacing(spacing: str, offset: int, alpha_to_one: bool,
                                                  prediction_type: str) -> None:
    noise = normal(64, 2)
    options = {"timestep_spacing": spacing, "steps_offset": offset, "set_alpha_to_one": alpha_to_one}
    scheduler = diffusers.DDIMScheduler(**SD_CONFIG, clip_sample=False, prediction_type=_name(prediction_type),
                                        **options)
    expected = diffusers_run(scheduler, 25, prediction_type, noise)
    torch.testing.assert_close(ours("ddim", 25, prediction_type, noise, **options), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_dpm_solver_matches_diffusers(prediction_type: str) -> None:
    """Trailing only: diffusers' DPM-Solver reads ``linspace`` as steps + 1 points less the last."""
    noise = normal(64, 2)
    scheduler = diffusers.DPMSolverMultistepScheduler(**SD_CONFIG, algorithm_type="dpmsolver++", solver_order=2,
                                                      timestep_spacing="trailing",
                                                      prediction_type=_name(prediction_type))
    expected = diffusers_run(scheduler, 20, prediction_type, noise)
    got = ours("dpmpp", 20, prediction_type, noise)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 5, 50])
def test_plms_matches_diffusers_pndm(steps: int) -> None:
    """eps models (SD 1.x); for v-prediction diffusers extrapolates the raw v outputs, PLMS here eps."""
    noise = normal(64, 2)
    scheduler = diffusers.PNDMScheduler(**SD_CONFIG, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    expected = diffusers_run(scheduler, steps, "eps", noise)
    got = ours("plms", steps, "eps", noise, timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize(("steps", "tol"), [(25, 4.5e-3), (50, 1.7e-3)])  # measured 0.0031 and 0.0012
def test_plms_follows_the_flow_map(steps: int, tol: float, prediction_type: str) -> None:
    """A fourth-order multistep method: far closer to the exact ODE solution than DDIM at the same steps."""
    error = rms_error("plms", LINEAR, prediction_type, steps)
    assert error < tol and error < rms_error("ddim", LINEAR, prediction_type, steps) / 10


def test_plms_at_zero_terminal_snr() -> None:
    """The first step starts from pure noise (alpha_bar = 0), where eps alone cannot give x0."""
    assert rms_error("plms", COSINE_ZERO_SNR, "v", 50) < 1e-3  # measured 6.1e-4 (DDIM: 0.014)


def test_timestep_spacings() -> None:
    def visited(spacing: str, steps: int, offset: int = 0) -> list[int]:
        return build_sampler("ddim", SD, "eps", steps, timestep_spacing=spacing, steps_offset=offset).timesteps() \
            .tolist()

    assert visited("leading", 50, 1)[:3] == [981, 961, 941] and visited("leading", 50, 1)[-1] == 1
    assert visited("trailing", 4) == [999, 749, 499, 249] and visited("linspace", 4) == [999, 666, 333, 0]
    with pytest.raises(ValueError, match="unknown timestep_spacing 'uniform'; valid: trailing, leading, linspace"):
        build_sampler("plms", SD, "eps", 10, timestep_spacing="uniform")
    with pytest.raises(ValueError, match=r"steps_offset=100 must be in \[0, 100\) for 10 leading steps"):
        build_sampler("ddim", SD, "eps", 10, timestep_spacing="leading", steps_offset=100)


def _name(prediction_type: str) -> str:
    return {"eps": "epsilon", "v": "v_prediction"}[prediction_type]
