"""pixelforge: one config-driven training path from image classifiers to latent diffusion."""

from pathlib import Path

__version__ = "0.1.0"
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"  # the Hydra configs, beside src/ in the repository
