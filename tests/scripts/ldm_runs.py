"""A text-to-image latent diffusion run for the script tests, trained in seconds on 16x16 shapes."""

from __future__ import annotations

from pathlib import Path

from runner import TINY

from pixelforge.cli import compose_config, parse
from pixelforge.train import run

SHAPES = ["data.image_size=16", "data.dataset.num_samples={train: 64, val: 16, test: 16, heldout: 16}",
          "data.batch_size=16"]
FAST = [override for override in TINY if not override.startswith("data")]  # few steps on the CPU, no progress bar
FIRST_STAGE = ["experiment=autoencoder_kl_shapes", "model.ddconfig.ch=8", "model.ddconfig.ch_mult=[1,2]",
               "model.ddconfig.num_groups=4"]
LDM = ["experiment=ldm_shapes_txt2img", "model.unet.model_channels=16", "model.unet.num_groups=8",
       "model.unet.num_res_blocks=1",
       "model.conditioner.caption.encoder.dim=32", "model.conditioner.caption.encoder.depth=1",
       "model.log_sampler.steps=2"]


def train_shapes(logdir: Path, *overrides: str) -> Path:
    """Train a tiny run on 16x16 shapes into ``logdir`` and return its run directory."""
    run(compose_config(*parse(["-t", "--no-test", "-l", str(logdir), *overrides, *SHAPES, *FAST])))
    (run_dir,) = logdir.iterdir()
    return run_dir


def train_tiny_ldm(tmp_path: Path) -> Path:
    """A KL first stage (f = 2) and a text-conditioned LDM on it (latents 4x8x8); returns the LDM's run directory.

    The first stage's run directory is the LDM config's ``model.first_stage.run``.
    """
    first_stage = train_shapes(tmp_path / "first_stage", *FIRST_STAGE)
    return train_shapes(tmp_path / "ldm", *LDM, f"model.first_stage.run={first_stage}")
