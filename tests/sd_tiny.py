"""A tiny random Stable Diffusion 1.x (32 px, f = 2, 32-wide U-Net and text tower) for the tests that need a
single file: its config overrides, as a dict and as command-line overrides, and a written file."""

from __future__ import annotations

from pathlib import Path

import torch

from pixelforge.interop import stable_diffusion

TINY = stable_diffusion.toy(32)


def overrides(node: dict = TINY, prefix: str = "model.") -> list[str]:
    """``TINY`` as Hydra overrides (``model.unet.model_channels=32`` ...)."""
    out = []
    for key, value in node.items():
        if isinstance(value, dict):
            out += overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={str(value).replace(' ', '')}")
    return out


def randomise(model: stable_diffusion.DiffusionModel) -> stable_diffusion.DiffusionModel:
    """Random weights in the U-Net and the autoencoder, whose output layers start at zero (hiding every mistake)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in [*model.unet.parameters(), *model.first_stage.parameters()]:
            p.normal_(0, 0.05)
    return model.eval()


def write_tiny_sd(path: Path) -> Path:
    """A tiny SD 1.x with random U-Net and autoencoder weights, saved as a CompVis-layout safetensors file."""
    return stable_diffusion.save(randomise(stable_diffusion.build("v1", TINY)), path)
