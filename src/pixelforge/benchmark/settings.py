"""Sizes and iteration counts of the benchmark, and the smaller ones of ``--quick``.

The models themselves come from the experiment configs (``recipes``); what is set here is only what the benchmark
adds: Hydra overrides for a second size, the unconditional case's U-Net (the peer's architecture) and the loops.
"""

from __future__ import annotations

import copy
from typing import Any

SETTINGS: dict[str, dict[str, Any]] = {
    # overrides every --experiment recipe is composed with; "large": the text case's second, larger size (32x32
    # latents at f = 4)
    "recipe": {"overrides": [], "large": ["data.image_size=128", "data.batch_size=8"]},
    # the unconditional pixel recipe with its U-Net at the architecture of denoising-diffusion-pytorch's
    # Unet(dim=model_channels, dim_mults=channel_mult), whose parameter count this matches
    "uncond": {"experiment": "ddpm_mnist5k",
               "unet": ["model.unet.model_channels=64", "model.unet.channel_mult=[1,2]", "model.unet.num_heads=4",
                        "model.unet.attention_resolutions=[2]", "model.unet.num_groups=32"],
               "size": ["data.batch_size=16"]},
    # Stable Diffusion's model (random weights) at its released size, or shrunk to a toy of it (f = 2, 32 px)
    "sd": {"version": "v1", "toy": False, "batch_size": 1},
    "sampling": {"batch_size": 8, "loops": {"dpmpp": 20, "ddim": 50}},
    "data": {"batches": 20},
    # the time-to-quality run: the recipe as main.py -t trains it, its strict shape fit measured every epoch of the
    # default recipe (312 steps) on 200 held-out captions
    "quality": {"overrides": [], "every_n_steps": 312, "n_samples": 200, "target": 0.95},
    "timing": {"warmup": 2, "iters": 7, "loop_iters": 3, "matmul_size": 1024},
}
QUICK: dict[str, dict[str, Any]] = {
    "recipe": {"overrides": ["data.batch_size=2"], "large": ["data.batch_size=1"]},
    "uncond": {"size": ["data.batch_size=1", "data.image_size=16", "data.dataset.resize_mode=resize"]},
    "sd": {"toy": True},
    "sampling": {"batch_size": 1, "loops": {"dpmpp": 3, "ddim": 3}},
    "data": {"batches": 1},
    "quality": {"overrides": ["trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                              "trainer.num_sanity_val_steps=0", "data.dataset.num_samples.train=16",
                              "data.num_workers=0", "callbacks.image_logger=null", "callbacks.progress_bar=null",
                              "test=false"],
                "every_n_steps": 1, "n_samples": 2},
    "timing": {"warmup": 1, "iters": 1, "loop_iters": 1, "matmul_size": 128},
}


def settings(quick: bool) -> dict[str, dict[str, Any]]:
    """SETTINGS, with QUICK's values laid over it for ``--quick``."""
    chosen = copy.deepcopy(SETTINGS)
    if quick:
        for section, values in QUICK.items():
            chosen[section].update(copy.deepcopy(values))
    return chosen
