"""Noise schedules, losses, samplers and guidance: pure code over a denoiser, shared by pixel and latent models."""

from pixelforge.diffusion.losses import diffusion_loss, min_snr_weight, offset_noise, timestep_buckets
from pixelforge.diffusion.samplers import SAMPLERS, ClassifierFreeGuidance, Sampler, build_sampler
from pixelforge.diffusion.schedule import PREDICTION_TYPES, SCHEDULE_KINDS, NoiseSchedule

__all__ = [
    "PREDICTION_TYPES",
    "SAMPLERS",
    "SCHEDULE_KINDS",
    "ClassifierFreeGuidance",
    "NoiseSchedule",
    "Sampler",
    "build_sampler",
    "diffusion_loss",
    "min_snr_weight",
    "offset_noise",
    "timestep_buckets",
]
