"""Latent diffusion (Rombach et al. 2022): the DDPM module on ``scale_factor`` x a frozen autoencoder's latents."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from pixelforge.models.diffusion import DDPM
from pixelforge.models.first_stage import FirstStageModel
from pixelforge.modules.conditioning import ConditionedUNet
from pixelforge.runs import load_run, model_config
from pixelforge.utils.images import caption_images

CONDITIONING_KEYS = ("crossattn", "concat", "hybrid", "class", None)


def load_first_stage(spec: Mapping[str, Any]) -> FirstStageModel:
    """The frozen autoencoder ``spec`` names: a ``run`` directory and/or ``ckpt`` file, or a model ``config``.

    ``experiment`` alone is resolved to a finished run (training one if needed) by ``main.py`` before the model
    is built; see :func:`pixelforge.stages.plan`.
    """
    run, ckpt, config = spec.get("run"), spec.get("ckpt"), spec.get("config")
    if run or ckpt:
        saved = Path(run) / "configs" / "config.yaml" if run else None
        _, model = load_run(ckpt or run, saved)
    elif config is not None:
        model = instantiate(model_config(config), _convert_="all")
    else:
        hint = (f"; experiment {spec['experiment']!r} is turned into a run by main.py -t"
                if spec.get("experiment") else "")
        raise ValueError(f"first_stage needs a run directory (run), a checkpoint (ckpt) or a model config "
                         f"(config), got {dict(spec)}{hint}")
    if not isinstance(model, FirstStageModel):
        raise ValueError(f"first_stage {dict(spec)} is a {type(model).__name__}, not a first-stage autoencoder "
                         "(AutoencoderKL or VQModel)")
    return model.eval().requires_grad_(False)


def build_unet(unet: Callable[..., nn.Module], derived: Mapping[str, Any]) -> nn.Module:
    """The U-Net of the partial ``unet`` with the sizes that follow from the rest of the model (``derived``); a size
    the config also sets must agree, so changing one key (``coord_channels``, the text encoder) cannot break another."""
    given = getattr(unet, "keywords", {})
    for key, value in derived.items():
        if key in given and given[key] != value:
            raise ValueError(f"model.unet.{key}={given[key]} does not fit the model, which needs {value} "
                             f"({UNET_SIZES[key]}); leave model.unet.{key} out")
    return unet(**{**given, **derived})


UNET_SIZES = {"in_channels": "the first stage's latent channels, + 2 coordinate maps with coord_channels, + the "
                             "concat map's channels",
              "out_channels": "the first stage's latent channels",
              "context_dim": "the cond_stage encoder's width; None without one"}


class LatentDiffusion(DDPM):
    """DDPM on ``z = scale_factor · encode(x)`` of a frozen first stage, conditioned as ``conditioning_key`` says.

    ``crossattn``: ``cond_stage`` encodes ``batch[cond_stage_key]`` (captions, or labels for a class embedder)
    into tokens the U-Net's spatial transformers attend to; ``class``: ``batch[cond_key]`` labels go to the U-Net's
    label embedding; ``concat``: ``batch[concat_key]`` (B,C,H,W in image space; encoded when it has the image
    channels, else resized) joins the input channels; ``hybrid``: crossattn and concat. During training each
    condition is replaced by the unconditional one (empty prompt, null label) with probability ``ucg_rate``, so
    classifier-free guidance works. ``scale_by_std`` sets ``scale_factor`` to 1/std of the first training batch's
    latents (CompVis) and the checkpoint keeps it. The first stage is frozen, in eval mode and in the checkpoint.
    ``coord_channels`` gives the U-Net two coordinate maps as extra inputs (see ``ConditionedUNet``).

    ``unet`` is a partial (``_partial_: true``) whose ``in_channels``, ``out_channels`` and ``context_dim`` this
    model fills in from the first stage, ``coord_channels``, ``concat_channels`` and ``cond_stage``; a built
    U-Net (the configs of older runs) is used as it is.
    """

    def __init__(
        self,
        unet: nn.Module | Callable[..., nn.Module],
        first_stage: Mapping[str, Any],
        cond_stage: nn.Module | None = None,
        conditioning_key: str | None = "crossattn",
        cond_stage_key: str = "caption",
        concat_key: str | None = None,
        ucg_rate: float = 0.1,
        scale_factor: float = 1.0,
        scale_by_std: bool = True,
        sample_posterior: bool = True,
        image_size: int = 32,
        coord_channels: bool = False,
        concat_channels: int | None = None,
        **ddpm_kwargs: Any,
    ) -> None:
        if conditioning_key not in CONDITIONING_KEYS:
            raise ValueError(f"unknown conditioning_key {conditioning_key!r}; valid: {CONDITIONING_KEYS}")
        crossattn = conditioning_key in ("crossattn", "hybrid")
        if crossattn and cond_stage is None:
            raise ValueError(f"conditioning_key {conditioning_key!r} needs a cond_stage encoder")
        if not crossattn and cond_stage is not None:
            raise ValueError(f"a cond_stage encoder needs conditioning_key 'crossattn' or 'hybrid', "
                             f"got {conditioning_key!r}")
        if (conditioning_key in ("concat", "hybrid")) != (concat_key is not None):
            raise ValueError(f"concat_key ({concat_key!r}) goes with conditioning_key 'concat' or 'hybrid' only, "
                             f"got {conditioning_key!r}")
        if (conditioning_key == "class") != bool(ddpm_kwargs.get("cond_key")):
            raise ValueError("conditioning_key 'class' and cond_key (the batch's label key) go together")
        stage = load_first_stage(first_stage)
        if image_size % stage.downsample_factor:
            raise ValueError(f"image_size {image_size} is not divisible by the first stage's factor "
                             f"{stage.downsample_factor}")
        if not isinstance(unet, nn.Module):
            if concat_key is not None and concat_channels is None:
                raise ValueError("concat_channels is needed with concat_key: the channels of the map joined to the "
                                 "latents (the latent channels when it is an image the first stage encodes)")
            unet = build_unet(unet, {
                "in_channels": stage.embed_dim + (concat_channels or 0) + (2 if coord_channels else 0),
                "out_channels": stage.embed_dim,
                "context_dim": cond_stage.dim if cond_stage is not None else None})
        super().__init__(ConditionedUNet(unet, cond_stage, coord_channels), image_size=image_size,
                         channels=stage.embed_dim, cond_drop_prob=ucg_rate, **ddpm_kwargs)
        self.first_stage = stage
        self.crossattn = crossattn
        self.cond_stage_key = cond_stage_key
        self.concat_key = concat_key
        self.ucg_rate = ucg_rate
        self.scale_by_std = scale_by_std
        self.sample_posterior = sample_posterior
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent position along each side (the first stage's f)."""
        return self.first_stage.downsample_factor

    @property
    def text_conditioned(self) -> bool:
        """Whether the model is prompted with text: a cross-attention encoder whose null condition is ``""``."""
        return self.crossattn and isinstance(self.unet.cond_stage.unconditional(1), list)

    def train(self, mode: bool = True) -> LatentDiffusion:
        """Train the denoiser; the first stage always stays in eval mode."""
        super().train(mode)
        self.first_stage.eval()
        return self

    # ---- latents ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents ``scale_factor · encode(images)`` of images in [-1, 1]."""
        return self.scale_factor * self.first_stage.encode_latent(images, sample=sample, generator=generator)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from scaled latents."""
        return self.first_stage.decode(z / self.scale_factor).clamp(-1, 1)

    def diffusion_input(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.encode(batch["image"], sample=self.sample_posterior)

    def sample_shape(self, n: int, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """Latent noise shape for ``n`` images of ``height`` x ``width`` pixels (default: the training size)."""
        height, width = height or self.image_size, width or self.image_size
        multiple = self.downsample_factor * getattr(self.unet.unet, "downsampling", 1)
        if height % multiple or width % multiple:
            raise ValueError(f"H={height} and W={width} must be multiples of {multiple} (first-stage factor "
                             f"{self.downsample_factor} x the U-Net's downsampling)")
        return (n, self.channels, height // self.downsample_factor, width // self.downsample_factor)

    @torch.no_grad()
    def fit_scale_factor(self, images: torch.Tensor) -> None:
        """Set ``scale_factor`` to 1/std of the latents of ``images`` (gathered over all ranks under DDP)."""
        z = self.first_stage.encode_latent(images, sample=self.sample_posterior).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            z = self.all_gather(z)
        self.scale_factor.fill_(1.0 / z.flatten().std().item())

    def on_train_batch_start(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """With ``scale_by_std``, fit ``scale_factor`` on the first training batch (not again on resume)."""
        if self.scale_by_std and self.global_step == 0 and batch_idx == 0:
            self.fit_scale_factor(batch["image"])
            self.print(f"scale_factor = 1/std of the first batch's latents = {self.scale_factor.item():.4f}")

    # ---- conditioning -------------------------------------------------------------------------------------
    def drop_condition(self, raw: Any, net: nn.Module) -> Any:
        """Replace each raw condition by the encoder's unconditional one with probability ``ucg_rate``."""
        if self.ucg_rate <= 0:
            return raw
        null = net.cond_stage.unconditional(len(raw))
        drop = (torch.rand(len(raw)) < self.ucg_rate).tolist()
        if isinstance(raw, torch.Tensor):
            mask = torch.tensor(drop, device=raw.device).view(-1, *([1] * (raw.dim() - 1)))
            return torch.where(mask, null.to(raw.device), raw)
        return [n if d else r for r, n, d in zip(raw, null, drop, strict=True)]

    def concat_condition(self, spatial: torch.Tensor) -> torch.Tensor:
        """A B,C,H,W image-space condition at latent size: encoded if it is an image, else resized (area)."""
        spatial = spatial.to(self.device, torch.float32)
        if spatial.shape[1] == self.first_stage.in_channels:
            return self.encode(spatial)
        return F.interpolate(spatial, size=self.sample_shape(1, *spatial.shape[-2:])[-2:], mode="area")

    def condition(self, batch: Mapping[str, Any], net: nn.Module, drop: bool) -> dict[str, Any]:
        cond = super().condition(batch, net, drop)
        if self.crossattn:
            raw = batch[self.cond_stage_key]
            cond.update(net.encode(self.drop_condition(raw, net) if drop else raw))
        if self.concat_key is not None:
            cond["concat"] = self.concat_condition(batch[self.concat_key])
        return cond

    def conditions(self, net: nn.Module, count: int, prompts: Any, labels: torch.Tensor | None,
                   concat: torch.Tensor | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(condition, unconditional condition or None for an unconditional model) for ``count`` samples."""
        cond: dict[str, Any] = {}
        uncond: dict[str, Any] = {}
        if self.crossattn:
            null = net.cond_stage.unconditional(count)
            cond.update(net.encode(null if prompts is None else prompts))
            uncond.update(net.encode(null))
        if self.cond_keys:
            cond["y"] = self.null_labels(count) if labels is None else labels.to(self.device)
            uncond["y"] = self.null_labels(count)
        if self.concat_key is not None:
            if concat is None:
                raise ValueError(f"this model is conditioned on {self.concat_key!r} maps: pass concat")
            cond["concat"] = uncond["concat"] = self.concat_condition(concat)
        return cond, (uncond if self.crossattn or self.cond_keys else None)

    # ---- sampling -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int | None = None,
        prompts: Sequence[str] | torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        sampler: str = "dpmpp",
        steps: int | None = 20,
        scale: float = 1.0,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        callback: Callable | None = None,
        progress: bool = False,
        height: int | None = None,
        width: int | None = None,
        init_images: torch.Tensor | None = None,
        strength: float | None = None,
        keep_mask: torch.Tensor | None = None,
        concat: torch.Tensor | None = None,
        **sampler_kwargs: Any,
    ) -> torch.Tensor:
        """Images in [-1, 1] for ``prompts`` (or labels, or unconditionally), guided at ``scale``.

        ``init_images`` with ``strength`` in (0, 1] is img2img (re-noise the image's latent part way, then
        denoise); with ``keep_mask`` (B or 1,1,H,W, 1 = keep the init image) it inpaints the rest. ``noise`` fixes
        the initial latent (CompVis's ``--fixed_code``); ``height``/``width`` pick another output size.
        """
        sizes = [len(x) for x in (prompts, labels, init_images, noise) if x is not None]
        count = n if n is not None else (sizes[0] if sizes else None)
        if count is None:
            raise ValueError("give n, prompts, labels, init_images or noise to say how many images to sample")
        net = self.network(use_ema)
        init = None
        if init_images is not None:
            init = self.encode(init_images.to(self.device)).float()  # float32 even under autocast
            height, width = init_images.shape[-2:]
        if noise is None:
            noise = torch.randn(self.sample_shape(count, height, width), generator=generator, device=self.device)
        cond, uncond = self.conditions(net, count, prompts, labels, concat)
        mask = None
        if keep_mask is not None:
            if init is None:
                raise ValueError("keep_mask (inpainting) needs init_images")
            mask = F.interpolate(keep_mask.to(self.device, torch.float32), size=init.shape[-2:], mode="area")
        if init is not None and strength is None:
            strength = 1.0
        z = self.run_sampler(noise, cond, uncond, sampler, steps, scale, generator, use_ema, callback, progress,
                             strength=strength, init=init, mask=mask, **sampler_kwargs)
        return self.decode(z)

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], max_images: int = 16, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Inputs, reconstructions, the conditioning as text, samples without and with guidance, denoising row."""
        x = batch["image"][:max_images]
        n = len(x)
        images = {"inputs": x, "reconstructions": self.decode(self.encode(x))}
        prompts = batch[self.cond_stage_key][:n] if self.crossattn else None
        labels = self.labels(batch)
        labels = labels[:n] if labels is not None else None
        if prompts is not None or labels is not None:
            texts = [str(p) for p in (prompts if prompts is not None else labels.tolist())]
            images["conditioning"] = caption_images(torch.full_like(x, -1.0), texts)
        concat = batch[self.concat_key][:n] if self.concat_key is not None else None
        options = {"sampler": self.log_sampler["name"], "steps": self.log_sampler.get("steps")}
        generator = torch.Generator(self.device).manual_seed(0)
        images["samples"] = self.sample(n, prompts=prompts, labels=labels, concat=concat, generator=generator,
                                        **options)
        trajectory: list[torch.Tensor] = []
        if prompts is not None or labels is not None:
            generator = torch.Generator(self.device).manual_seed(0)
            images["samples_cfg"] = self.sample(
                n, prompts=prompts, labels=labels, concat=concat, generator=generator,
                scale=self.log_guidance_scale, callback=lambda i, z, z0: trajectory.append(z0[:1]), **options)
        else:
            self.sample(1, concat=None if concat is None else concat[:1],
                        callback=lambda i, z, z0: trajectory.append(z0[:1]), **options)
        keep = torch.linspace(0, len(trajectory) - 1, min(8, len(trajectory))).long().tolist()
        images["denoise_row"] = self.decode(torch.cat([trajectory[i] for i in keep]))
        return images
