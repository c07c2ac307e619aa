"""Samplers over a denoiser ``model(x_t, t, cond) -> prediction``, a registry of them, and classifier-free guidance."""

from __future__ import annotations

from typing import Any

from pixelforge.diffusion.samplers.base import Denoiser, Sampler
from pixelforge.diffusion.samplers.ddim import DDIMSampler
from pixelforge.diffusion.samplers.ddpm import DDPMSampler
from pixelforge.diffusion.samplers.dpm_solver import DPMSolverPP2MSampler
from pixelforge.diffusion.samplers.euler_ancestral import EulerAncestralSampler
from pixelforge.diffusion.samplers.guidance import ClassifierFreeGuidance, concat_cond
from pixelforge.diffusion.samplers.plms import PLMSSampler
from pixelforge.diffusion.schedule import NoiseSchedule

SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpmpp": DPMSolverPP2MSampler,
    "euler_a": EulerAncestralSampler,
    "plms": PLMSSampler,
}


def build_sampler(
    name: str, schedule: NoiseSchedule, prediction_type: str = "eps", steps: int | None = None, **kwargs: Any
) -> Sampler:
    """The sampler registered as ``name``; extra keyword arguments (e.g. eta) go to its constructor."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](schedule, prediction_type, steps, **kwargs)


__all__ = [
    "SAMPLERS",
    "ClassifierFreeGuidance",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPP2MSampler",
    "Denoiser",
    "EulerAncestralSampler",
    "PLMSSampler",
    "Sampler",
    "build_sampler",
    "concat_cond",
]
