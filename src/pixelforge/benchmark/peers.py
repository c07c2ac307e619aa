"""The peer libraries behind pixelforge's interfaces: diffusers' UNet2DConditionModel and denoising-diffusion-pytorch's
Unet as a DiffusionModel's U-Net (built to our architecture, so the peer does the same FLOPs), diffusers' schedulers
driving our denoiser."""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from pixelforge.benchmark.timing import Denoise
from pixelforge.diffusion.samplers import Sampler
from pixelforge.interop.diffusers_folder import scheduler_config, unet_config
from pixelforge.models.diffusion import DiffusionModel
from pixelforge.modules.unet import ResBlock, UNetModel

PEERS = {"diffusers": "diffusers", "ddpm": "denoising_diffusion_pytorch"}  # short name -> module (the bench extra)


def import_peers(enabled: bool) -> dict[str, ModuleType]:
    """The peer libraries that import, by short name; none when disabled."""
    peers = {}
    for name, module in PEERS.items() if enabled else ():
        with contextlib.suppress(ImportError):
            peers[name] = importlib.import_module(module)
    return peers


class PeerUNet(nn.Module):
    """A foreign U-Net called as ours, ``unet(x, t, y=, context=, context_mask=, pooled=)``, with the attributes a
    DiffusionModel reads of its U-Net (``context_dim``, ``num_classes``, ``pooled_dim``, ``downsampling``) copied
    from the U-Net it stands in for."""

    def __init__(self, net: nn.Module, like: UNetModel) -> None:
        super().__init__()
        self.net = net
        self.context_dim, self.num_classes = like.context_dim, like.num_classes
        self.pooled_dim, self.downsampling = like.pooled_dim, like.downsampling


class DiffusersUNet(PeerUNet):
    """diffusers' UNet2DConditionModel as a DiffusionModel's U-Net; the pooled text joins through its class
    embedding (``class_embed_type="projection"``), as ours adds it to the timestep embedding."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, pooled: Tensor | None = None) -> Tensor:
        return self.net(x, t, encoder_hidden_states=context, encoder_attention_mask=context_mask,
                        class_labels=pooled, return_dict=False)[0]


class DDPMUNet(PeerUNet):
    """denoising-diffusion-pytorch's unconditional Unet as a DiffusionModel's U-Net."""

    def forward(self, x: Tensor, t: Tensor, **unused: Any) -> Tensor:
        return self.net(x, t)


def diffusers_unet(diffusers: ModuleType, model: DiffusionModel) -> DiffusersUNet:
    """UNet2DConditionModel with the model's U-Net's levels, widths, blocks, attention placement, heads and context
    (the exporter's mapping, ``interop.diffusers_folder.unet_config``), and its transformer depth, norm groups,
    scale-shift and pooled-text projection."""
    unet = model.unet
    if unet.context_dim is None or unet.num_classes is not None:
        raise ValueError("the diffusers peer stands in for a text-conditioned U-Net without class labels; this one "
                         f"has context_dim={unet.context_dim}, num_classes={unet.num_classes}")
    scale_shift = next(m for m in unet.modules() if isinstance(m, ResBlock)).use_scale_shift_norm
    config = {key: value for key, value in unet_config(model).items() if not key.startswith("_")}
    config.update(transformer_layers_per_block=unet.config["transformer_depth"], norm_num_groups=unet.out[0].num_groups,
                  resnet_time_scale_shift="scale_shift" if scale_shift else "default")
    if unet.pooled_dim is not None:
        config.update(class_embed_type="projection", projection_class_embeddings_input_dim=unet.pooled_dim)
    return DiffusersUNet(diffusers.UNet2DConditionModel(**config), unet)


def ddpm_unet(ddpm: ModuleType, model: DiffusionModel) -> DDPMUNet:
    """denoising-diffusion-pytorch's Unet with the model's U-Net's base width, levels, channels and heads."""
    config = model.unet.config
    return DDPMUNet(ddpm.Unet(dim=config["model_channels"], dim_mults=tuple(config["channel_mult"]),
                              channels=config["in_channels"], attn_heads=config["num_heads"]), model.unet)


def with_unet(model: DiffusionModel, unet: nn.Module) -> DiffusionModel:
    """The same model around another U-Net: its hyperparameters, schedule, optimizer and frozen first stage, and a
    copy of its conditioner (whose encoder may train), so everything outside the U-Net costs the same."""
    return DiffusionModel(unet=unet, schedule=model.schedule, optimizer=model.optimizer, scheduler=model.scheduler,
                          first_stage=model.first_stage, conditioner=copy.deepcopy(model.conditioner),
                          **model.hparams)


def diffusers_scheduler(diffusers: ModuleType, name: str, model: DiffusionModel, sampler: Sampler) -> Any:
    """diffusers' DPMSolverMultistepScheduler (``dpmpp``) or DDIMScheduler (``ddim``) on the model's schedule and
    target, visiting the timesteps ``sampler`` visits."""
    classes = {"dpmpp": diffusers.DPMSolverMultistepScheduler, "ddim": diffusers.DDIMScheduler}
    if name not in classes:
        raise ValueError(f"no diffusers scheduler for sampler {name!r}; valid: {', '.join(classes)}")
    options = {**scheduler_config(model), "timestep_spacing": sampler.timestep_spacing,
               "steps_offset": sampler.steps_offset, "set_alpha_to_one": sampler.set_alpha_to_one,
               "rescale_betas_zero_snr": model.schedule.zero_terminal_snr, "algorithm_type": "dpmsolver++",
               "solver_order": 2}
    accepted = inspect.signature(classes[name]).parameters
    return classes[name](**{key: value for key, value in options.items() if key in accepted})


def diffusers_loop(scheduler: Any, steps: int, denoise: Denoise, noise: Tensor, cond: Any) -> Callable[[], Tensor]:
    """A diffusers scheduler's sampling loop of ``steps`` steps over ``denoise``, as diffusers' pipelines run it
    (call it under ``torch.no_grad``)."""

    def loop() -> Tensor:
        scheduler.set_timesteps(steps, device=noise.device)
        x = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            pred = denoise(scheduler.scale_model_input(x, t), t.expand(len(x)), cond)
            x = scheduler.step(pred, t, x, return_dict=False)[0]
        return x

    return loop
