"""pixelforge: one config-driven training path from image classifiers to latent diffusion."""

__version__ = "0.1.0"
