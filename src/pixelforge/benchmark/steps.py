"""The calls the cases time, on a built DiffusionModel: its own training step, and one denoiser call."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from pixelforge.benchmark.timing import Denoise, autocast
from pixelforge.models.diffusion import DiffusionModel


def train_step(model: DiffusionModel, batch: Mapping[str, Any], precision: str, device: torch.device,
               optimizer: torch.optim.Optimizer | None = None) -> Callable[[], None]:
    """One training step as Lightning's automatic optimisation runs it, less its logging and gradient clipping: the
    model's ``training_step`` under ``precision``, backward, a step of the optimizer the model configures (without
    its lr schedule, which only sets the lr; ``optimizer``: one already made, which steps that share a model can
    share, so its state is held once), and the ``on_train_batch_end`` hook (the EMA update)."""
    model.to(device).train()
    optimizer = optimizer or model.optimizer(model.trained().parameters())
    # training_step logs; with no Trainer attached Lightning warns and drops the value, which is all we want
    warnings.filterwarnings("ignore", message=r"You are trying to `self\.log\(\)` but the `self\.trainer` reference")

    def step() -> None:
        with autocast(device, precision):
            loss = model.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.on_train_batch_end(loss, batch, 0)

    return step


def denoiser(model: DiffusionModel) -> Denoise:
    """The model's U-Net as the samplers call it: ``denoise(x, t, cond)`` with coordinate and concat maps joined."""
    return lambda x, t, cond: model.apply_unet(model.unet, x, t, cond)


def conditions(model: DiffusionModel, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The U-Net keywords of the batch's conditions, as sampling makes them (no condition dropped)."""
    with torch.no_grad():
        return model.unet_conditions(model.conditioner, model.conditioner.read(batch))


def forward(model: DiffusionModel, batch: Mapping[str, Any], precision: str,
            device: torch.device) -> Callable[[], Tensor]:
    """One inference call of the denoiser under ``precision``, on latent noise at random timesteps under the
    batch's conditions (computed once, outside the timing, as a sampler does)."""
    model.to(device).eval()
    n = len(batch["image"])
    cond = conditions(model, batch)
    x = torch.randn(model.sample_shape(n), device=device)
    t = torch.randint(0, model.schedule.num_timesteps, (n,), device=device)
    denoise = denoiser(model)

    def call() -> Tensor:
        with torch.no_grad(), autocast(device, precision):
            return denoise(x, t, cond)

    return call
