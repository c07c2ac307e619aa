"""One diffusion model for pixels and latents: a frozen first stage, a conditioner, a U-Net denoiser, a schedule."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from pixelforge.conditioning import Conditioner, masked_mean
from pixelforge.diffusion.losses import diffusion_loss, offset_noise, timestep_buckets
from pixelforge.diffusion.samplers import ClassifierFreeGuidance, build_sampler
from pixelforge.diffusion.schedule import NoiseSchedule
from pixelforge.models.first_stage import load_first_stage
from pixelforge.modules.ema import EMA
from pixelforge.modules.embeddings import coordinates
from pixelforge.modules.first_stage import IdentityFirstStage
from pixelforge.optim import configure_optimizer
from pixelforge.parallel import FSDPStrategy, reshard
from pixelforge.utils.images import caption_images

UNET_SIZES = {"in_channels": "the latent channels, + 2 coordinate maps with coord_channels, + a concat map's "
                             "channels",
              "out_channels": "the latent channels",
              "context_dim": "the width of the conditioner's context encoder; None without one",
              "num_classes": "the class counts of the conditioner's label embedder; None without one"}


def check_unet(unet: nn.Module, derived: Mapping[str, Any]) -> None:
    """A built U-Net (an older run's config) must take the conditioning the model gives it."""
    classes = derived["num_classes"]  # the U-Net keeps its class counts as a tuple
    wanted = {"context_dim": derived["context_dim"],
              "num_classes": (classes,) if isinstance(classes, int) else None if classes is None else tuple(classes)}
    for key in ("context_dim", "num_classes"):
        actual = getattr(unet, key, None)
        if actual != wanted[key]:
            raise ValueError(f"the U-Net's {key} ({actual}) must be {wanted[key]}: {UNET_SIZES[key]}")


def build_unet(unet: nn.Module | Callable[..., nn.Module], derived: Mapping[str, Any]) -> nn.Module:
    """The U-Net of the partial ``unet`` with the sizes that follow from the rest of the model (``derived``); a size
    the config also sets must agree, so changing one key (``coord_channels``, the text encoder) cannot break another."""
    if isinstance(unet, nn.Module):
        check_unet(unet, derived)
        return unet
    given = getattr(unet, "keywords", {})
    for key, value in derived.items():
        if key in given and given[key] != value:
            raise ValueError(f"model.unet.{key}={given[key]} does not fit the model, which needs {value} "
                             f"({UNET_SIZES[key]}); leave model.unet.{key} out")
    return unet(**{**given, **derived})


@dataclass
class ImageInit:
    """Where img2img and inpainting start: ``images`` (B,C,H,W in [-1, 1]) re-noised to ``strength`` in (0, 1]; with
    ``keep_mask`` (B or 1,1,H,W, 1 = keep the image) only the rest is repainted."""

    images: torch.Tensor
    strength: float = 1.0
    keep_mask: torch.Tensor | None = None


class DiffusionModel(L.LightningModule):
    """Denoising diffusion on ``z = scale_factor · encode(x)`` of a frozen first stage; the U-Net predicts
    ``prediction_type`` (eps, x0 or v) under the conditioner's ``context`` / ``y`` / ``concat`` inputs.

    ``first_stage`` is a spec of a trained autoencoder (``run``, ``ckpt`` or ``config``; an ``experiment`` is turned
    into a run by ``main.py``) for latent diffusion, or None for pixel diffusion on ``channels``-channel images (the
    identity first stage). ``unet`` is a partial (``_partial_: true``) whose ``in_channels``, ``out_channels``,
    ``context_dim`` and ``num_classes`` the model fills in from the first stage, the conditioner,
    ``coord_channels`` (two coordinate-map inputs) and a concat map; a built U-Net (older runs) is checked instead.
    ``scale_by_std`` sets ``scale_factor`` to 1/std of the first training batch's latents (CompVis) and the
    checkpoint keeps it. ``sampling`` holds the sampler options every ``sample`` starts from
    (``timestep_spacing``, ``steps_offset``, ``set_alpha_to_one``: Stable Diffusion's are CompVis's leading, 1,
    false); ``decode_slice`` decodes that many latents at a time; ``log_prompts`` are sampled at every image log
    instead of the batch's captions (a fine-tune's validation prompts). The U-Net and trainable encoders train and are
    averaged (``ema``) together; validation and sampling use the average. ``clip_denoised`` keeps the samplers' x0
    estimates in [-1, 1] (pixel data); ``compile`` runs the trained U-Net through ``torch.compile``.
    """

    def __init__(
        self,
        unet: nn.Module | Callable[..., nn.Module],
        schedule: NoiseSchedule,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        first_stage: Mapping[str, Any] | nn.Module | None = None,
        conditioner: Conditioner | None = None,
        image_size: int = 32,
        channels: int | None = None,
        prediction_type: str = "eps",
        loss_type: str = "l2",
        min_snr_gamma: float | None = None,
        offset_noise_strength: float = 0.0,
        scale_factor: float = 1.0,
        scale_by_std: bool = False,
        sample_posterior: bool = True,
        coord_channels: bool = False,
        ema: Mapping[str, Any] | None = None,
        log_sampler: Mapping[str, Any] | None = None,
        sampling: Mapping[str, Any] | None = None,
        decode_slice: int | None = None,
        log_prompts: Sequence[str] | None = None,
        log_guidance_scale: float = 3.0,
        log_guidance_rescale: float = 0.0,
        clip_denoised: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["unet", "schedule", "optimizer", "scheduler", "first_stage", "conditioner"])
        self.first_stage = self.build_first_stage(first_stage, channels, image_size)
        self.conditioner = conditioner if conditioner is not None else Conditioner()
        self.unet = build_unet(unet, self.unet_sizes(coord_channels))
        self.schedule = schedule
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.image_size = image_size
        self.channels = self.first_stage.embed_dim
        self.prediction_type = prediction_type
        self.loss_type = loss_type
        self.min_snr_gamma = min_snr_gamma
        self.offset_noise_strength = offset_noise_strength
        self.scale_by_std = scale_by_std
        self.sample_posterior = sample_posterior
        self.coord_channels = coord_channels
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        self.ema = EMA(self.trained(), **ema) if ema is not None else None
        self.log_sampler = dict(log_sampler or {"name": "dpmpp", "steps": 20})
        self.sampling = dict(sampling or {})
        self.decode_slice = decode_slice
        self.log_prompts = list(log_prompts or [])
        if self.log_prompts and self.conditioner.input_keys != [self.conditioner.text_key]:
            raise ValueError(f"log_prompts need a model conditioned on a prompt alone; this one reads "
                             f"{self.conditioner.input_keys}")
        self.log_guidance_scale = log_guidance_scale
        self.log_guidance_rescale = log_guidance_rescale
        self.clip_denoised = clip_denoised
        self.compile_unet = compile

    # ---- construction -------------------------------------------------------------------------------------
    @staticmethod
    def build_first_stage(first_stage: Mapping[str, Any] | nn.Module | None, channels: int | None,
                          image_size: int) -> nn.Module:
        """The identity first stage on ``channels`` channels for pixel diffusion, or the frozen autoencoder."""
        if first_stage is None:
            if channels is None:
                raise ValueError("pixel diffusion (first_stage null) needs channels, the images' channel count")
            return IdentityFirstStage(channels)
        if isinstance(first_stage, nn.Module):  # built by the config (Stable Diffusion's), weights loaded later
            stage = first_stage.eval().requires_grad_(False)
        else:
            stage = load_first_stage(first_stage)
        if channels is not None and channels != stage.embed_dim:
            raise ValueError(f"channels={channels} does not fit the first stage, whose latents have "
                             f"{stage.embed_dim}; leave channels out")
        if image_size % stage.downsample_factor:
            raise ValueError(f"image_size {image_size} is not divisible by the first stage's factor "
                             f"{stage.downsample_factor}")
        return stage

    def unet_sizes(self, coord_channels: bool) -> dict[str, Any]:
        """The U-Net sizes that follow from the first stage, the conditioner and ``coord_channels``."""
        context, labels = self.conditioner.embedder("context"), self.conditioner.embedder("y")
        counts = None if labels is None else labels.encoder.num_classes
        return {"in_channels": self.first_stage.embed_dim + self.concat_channels + (2 if coord_channels else 0),
                "out_channels": self.first_stage.embed_dim,
                "context_dim": None if context is None else context.encoder.dim,
                "num_classes": None if counts is None else (counts[0] if len(counts) == 1 else list(counts))}

    @property
    def concat_channels(self) -> int:
        """Channels the concat map adds at latent size: the latent channels when it is an image the first stage
        encodes, else its own (it is resized)."""
        spatial = self.conditioner.embedder("concat")
        if spatial is None:
            return 0
        channels = spatial.encoder.channels
        return self.first_stage.embed_dim if channels == self.first_stage.in_channels else channels

    def sharded_networks(self) -> list[nn.Module]:
        """What ``trainer=fsdp`` shards: the U-Net, and its EMA copy alike (each rank averages its own shards)."""
        return [self.unet] + ([self.ema.module["unet"]] if self.ema is not None else [])

    def configure_model(self) -> None:
        """Under ``trainer=fsdp``: shard the U-Net, block by block as the strategy's ``wrap`` names them."""
        if isinstance(self.trainer.strategy, FSDPStrategy):
            self.trainer.strategy.shard(self)

    def trained(self) -> nn.ModuleDict:
        """What trains and is averaged: the U-Net and the conditioner (whose frozen encoders have no parameters)."""
        return nn.ModuleDict({"unet": self.unet, "conditioner": self.conditioner})

    def weights_to(self, dtype: torch.dtype) -> DiffusionModel:
        """The networks' weights in ``dtype`` (fp16/bf16: half their memory), to sample under autocast; the
        schedule and ``scale_factor`` stay in float32."""
        for part in (self.unet, self.first_stage, self.conditioner, self.ema):
            if part is not None:
                part.to(dtype)
        return self

    def adapter_names(self) -> list[str]:
        """The trainable weights when they are all LoRA adapters (a LoRA run), else none."""
        trainable = [name for name, p in self.named_parameters() if p.requires_grad]
        return trainable if trainable and all("lora_" in name for name in trainable) else []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A LoRA run checkpoints its adapters alone (a few MB): the frozen base comes back from the file the
        model is built from."""
        adapters = self.adapter_names()
        if adapters:
            checkpoint["state_dict"] = {name: checkpoint["state_dict"][name] for name in adapters}
            checkpoint["adapters_only"] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """An adapters-only checkpoint takes the rest of its weights from this model as built."""
        if checkpoint.get("adapters_only"):
            checkpoint["state_dict"] = {**self.state_dict(), **checkpoint["state_dict"]}

    def networks(self, use_ema: bool = True) -> tuple[nn.Module, Conditioner]:
        """(U-Net, conditioner) with the EMA (default) or the live weights."""
        if use_ema and self.ema is not None:
            return self.ema.module["unet"], self.ema.module["conditioner"]
        return self.unet, self.conditioner

    def train(self, mode: bool = True) -> DiffusionModel:
        """Train the denoiser; the first stage always stays in eval mode."""
        super().train(mode)
        self.first_stage.eval()
        return self

    # ---- what the model can be asked ----------------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        """Pixels per latent position along each side (1 for pixel diffusion)."""
        return self.first_stage.downsample_factor

    @property
    def text_conditioned(self) -> bool:
        """Whether the model is prompted with text."""
        return self.conditioner.text_key is not None

    @property
    def cond_keys(self) -> list[str]:
        """Batch keys of the class labels the model is conditioned on, as the other generative families name them."""
        return list(self.conditioner.label_heads)

    @property
    def class_counts(self) -> list[int]:
        """Number of classes per ``cond_keys`` key."""
        return list(self.conditioner.label_heads.values())

    # ---- latents ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents ``scale_factor · encode(images)`` of images in [-1, 1]."""
        return self.scale_factor * self.first_stage.encode_latent(images, sample=sample, generator=generator)

    def latent_cache_refusal(self) -> str | None:
        """Why the training images' latents cannot be computed once and reused (``LatentCache``), or None."""
        if isinstance(self.first_stage, IdentityFirstStage):
            return "pixel diffusion (model.first_stage null) has no first stage whose latents could be cached"
        if self.sample_posterior and self.first_stage.double_z:
            return ("model.sample_posterior=true draws a new posterior sample at every step, which a cache would "
                    "freeze; set model.sample_posterior=false to diffuse the posterior means")
        return None

    def batch_latents(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The batch's scaled latents: its cached first-stage latents (``LatentCache``'s ``latent``) when it has
        them, else its images encoded now."""
        if "latent" in batch:
            return self.scale_factor * batch["latent"]
        return self.encode(batch["image"], sample=self.sample_posterior)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from scaled latents, ``decode_slice`` latents at a time when set (the decoder's
        activations at 512 px are what fills a small GPU)."""
        z = z / self.scale_factor
        slices = z.split(self.decode_slice) if self.decode_slice else [z]
        return torch.cat([self.first_stage.decode(part) for part in slices]).clamp(-1, 1)

    def sample_shape(self, n: int, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """Latent noise shape for ``n`` images of ``height`` x ``width`` pixels (default: the training size)."""
        height, width = height or self.image_size, width or self.image_size
        multiple = self.downsample_factor * getattr(self.unet, "downsampling", 1)
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
    def concat_condition(self, spatial: torch.Tensor) -> torch.Tensor:
        """A B,C,H,W image-space condition at latent size: encoded if it is an image, else resized (area)."""
        spatial = spatial.to(self.device, torch.float32)
        if spatial.shape[1] == self.first_stage.in_channels:
            return self.encode(spatial)
        return F.interpolate(spatial, size=self.sample_shape(1, *spatial.shape[-2:])[-2:], mode="area")

    def unet_conditions(self, conditioner: Conditioner, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The U-Net keywords of raw conditions: the conditioner's, the concat map at latent size and, when the
        U-Net takes one, the mean context token as ``pooled``."""
        cond = conditioner(raw)
        if "concat" in cond:
            cond["concat"] = self.concat_condition(cond["concat"])
        if getattr(self.unet, "pooled_dim", None) is not None:
            cond["pooled"] = masked_mean(cond["context"], cond["context_mask"])
        return cond

    def apply_unet(self, unet: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        """``unet`` on ``x`` with the concat map and the coordinate maps joined to its channels."""
        cond = dict(cond)
        inputs = [x]
        concat = cond.pop("concat", None)
        if concat is not None:
            inputs.append(concat.to(x.dtype))
        if self.coord_channels:
            inputs.append(coordinates(x))
        return unet(torch.cat(inputs, dim=1) if len(inputs) > 1 else x, t, **cond)

    # ---- training -----------------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any], use_ema: bool = False,
             drop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample diffusion loss at random timesteps, and those timesteps; ``drop`` applies the conditions'
        ``ucg_rate`` (training)."""
        unet, conditioner = self.networks(use_ema)
        x0 = self.batch_latents(batch)
        t = torch.randint(0, self.schedule.num_timesteps, (len(x0),), device=x0.device)
        if self.offset_noise_strength > 0:
            noise = offset_noise(x0.shape, self.offset_noise_strength, device=x0.device).to(x0.dtype)
        else:
            noise = torch.randn_like(x0)
        raw = conditioner.read(batch)
        cond = self.unet_conditions(conditioner, conditioner.drop(raw) if drop else raw)
        pred = self.apply_unet(unet, self.schedule.q_sample(x0, t, noise), t, cond)
        target = self.schedule.target(x0, noise, t, self.prediction_type)
        loss = diffusion_loss(pred, target, t, self.schedule, self.loss_type, self.min_snr_gamma,
                              self.prediction_type)
        return loss, t

    def log_loss(self, loss: torch.Tensor, t: torch.Tensor, split: str) -> None:
        """Mean loss, and the loss per quartile of t so a user sees where the model struggles."""
        on_step = split == "train"
        self.log(f"{split}/loss", loss.mean(), prog_bar=True, on_step=on_step, on_epoch=True, sync_dist=not on_step,
                 batch_size=len(loss))
        buckets = timestep_buckets(t, self.schedule.num_timesteps, 4)
        for b in range(4):
            mask = buckets == b
            if mask.any():
                self.log(f"{split}/loss_q{b + 1}", loss[mask].mean(), on_step=False, on_epoch=True,
                         batch_size=int(mask.sum()), sync_dist=not on_step)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, t = self.loss(batch, drop=True)
        self.log_loss(loss, t, "train")
        return loss.mean()

    def on_fit_start(self) -> None:
        """With ``compile``, ``torch.compile`` the trained U-Net in place (state-dict keys unchanged)."""
        if self.compile_unet:
            self.unet.compile()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            reshard(self.sharded_networks())  # under trainer=fsdp the EMA averages shard by shard
            self.ema.update(self.trained())

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.log_loss(*self.loss(batch, use_ema=True), "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.log_loss(*self.loss(batch, use_ema=True), "test")

    def configure_optimizers(self) -> dict:
        return configure_optimizer(self.trained().parameters(), self.optimizer, self.scheduler,
                                   self.trainer.estimated_stepping_batches)

    # ---- sampling -----------------------------------------------------------------------------------------
    def label_conditions(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``labels`` (``B`` for one label key, ``B,K`` for K) as conditions, keyed as ``cond_keys``."""
        keys = self.cond_keys
        if not keys:
            raise ValueError("labels given, but this model is not conditioned on class labels")
        columns = labels.view(len(labels), -1)
        if columns.shape[1] != len(keys):
            raise ValueError(f"labels of shape {tuple(labels.shape)} do not match the label keys {keys}")
        return {key: columns[:, i] for i, key in enumerate(keys)}

    @torch.no_grad()
    def sample(
        self,
        n: int | None = None,
        conditions: Mapping[str, Any] | None = None,
        labels: torch.Tensor | None = None,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sampler: str = "dpmpp",
        steps: int | None = 20,
        scale: float = 1.0,
        guidance_rescale: float = 0.0,
        use_ema: bool = True,
        size: tuple[int, int] | None = None,
        init: ImageInit | None = None,
        **sampler_kwargs: Any,
    ) -> torch.Tensor:
        """Images in [-1, 1] under ``conditions`` (``{batch key: values}``, e.g. ``{"caption": prompts}``; a missing
        one is unconditional), guided at ``scale`` against the unconditional value (``guidance_rescale``: phi of
        ``ClassifierFreeGuidance``).

        ``labels`` is the class-label shorthand the other generative families take. The count is ``n``, or that of
        the conditions, ``noise`` (the fixed starting latent, CompVis's ``--fixed_code``) or ``init``; ``size``
        (H, W) picks another output size; ``init`` starts from images (img2img, inpainting). ``sampler_kwargs``
        go to the sampler (``eta``, ``callback``, ``progress``).
        """
        conditions = dict(conditions or {})
        if labels is not None:
            conditions.update(self.label_conditions(labels))
        sizes = [len(x) for x in (*conditions.values(), init.images if init else None, noise) if x is not None]
        count = n if n is not None else (sizes[0] if sizes else None)
        if count is None:
            raise ValueError("give n, conditions, labels, init or noise to say how many images to sample")
        unet, conditioner = self.networks(use_ema)
        raw = conditioner.read(conditions, count)
        cond = self.unet_conditions(conditioner, raw)
        model: Callable = lambda x, t, c: self.apply_unet(unet, x, t, c)  # noqa: E731
        if scale != 1.0:
            if not conditioner.guided:
                raise ValueError(f"guidance scale {scale} needs a conditional model; this one is unconditional "
                                 "(use scale 1)")
            model = ClassifierFreeGuidance(model, scale, self.unet_conditions(conditioner,
                                                                              conditioner.unconditional(raw)),
                                           guidance_rescale)
        if init is not None:
            size = tuple(init.images.shape[-2:])
        if noise is None:
            noise = torch.randn(self.sample_shape(count, *(size or (None, None))), generator=generator,
                                device=self.device)
        callback, progress = sampler_kwargs.pop("callback", None), sampler_kwargs.pop("progress", False)
        chosen = build_sampler(sampler, self.schedule, self.prediction_type, steps,
                               clip_x0=1.0 if self.clip_denoised else None, **{**self.sampling, **sampler_kwargs})
        start, known, mask = 0, None, None
        if init is not None:
            known = self.encode(init.images.to(self.device)).float()  # float32 even under autocast
            start = chosen.start_index(init.strength)
            t = chosen.timesteps()[start].to(noise.device).expand(len(noise))
            noise = self.schedule.q_sample(known, t, noise)
            if init.keep_mask is not None:
                mask = F.interpolate(init.keep_mask.to(self.device, torch.float32), size=known.shape[-2:],
                                     mode="area")
        z = chosen.sample(model, noise, cond=cond, generator=generator, start=start,
                          known=known if mask is not None else None, mask=mask, callback=callback, progress=progress)
        return self.decode(z)

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], max_images: int = 16, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Inputs, reconstructions (latent models), a forward-diffusion row, the conditions as text, samples
        without and with guidance, and a denoising row."""
        x = batch["image"][:max_images]
        n = len(x)
        z = self.encode(x)
        images = {"inputs": x}
        if not isinstance(self.first_stage, IdentityFirstStage):
            images["reconstructions"] = self.decode(z)
        ts = torch.linspace(0, self.schedule.num_timesteps - 1, 8, device=self.device).long()
        noise = torch.randn_like(z[:1]).expand(len(ts), -1, -1, -1)
        images["diffusion_row"] = self.decode(self.schedule.q_sample(z[:1].expand(len(ts), -1, -1, -1), ts, noise))
        conditions = {key: batch[key][:n] for key in self.conditioner.input_keys}
        if self.log_prompts:  # the same prompts at every log
            n, conditions = len(self.log_prompts), {self.conditioner.text_key: self.log_prompts}
        texts = self.condition_texts(conditions, n)
        if texts:
            images["conditioning"] = caption_images(x.new_full((n, *x.shape[1:]), -1.0), texts)
        options = {"sampler": self.log_sampler["name"], "steps": self.log_sampler.get("steps")}
        trajectory: list[torch.Tensor] = []
        keep_x0 = lambda i, z, z0: trajectory.append(z0[:1])  # noqa: E731
        generator = torch.Generator(self.device).manual_seed(0)
        guided = self.conditioner.guided
        images["samples"] = self.sample(n, conditions, generator=generator, callback=None if guided else keep_x0,
                                        **options)
        if guided:
            generator = torch.Generator(self.device).manual_seed(0)
            images["samples_cfg"] = self.sample(n, conditions, generator=generator, scale=self.log_guidance_scale,
                                                guidance_rescale=self.log_guidance_rescale, callback=keep_x0,
                                                **options)
        keep = torch.linspace(0, len(trajectory) - 1, min(8, len(trajectory))).long().tolist()
        images["denoise_row"] = self.decode(torch.cat([trajectory[i] for i in keep]))
        return images

    def condition_texts(self, conditions: Mapping[str, Any], n: int) -> list[str]:
        """One line per sample naming its prompt or labels (empty for an unconditional model or maps only)."""
        text_key = self.conditioner.text_key
        if text_key is not None:
            return [str(p) for p in conditions[text_key]]
        keys = self.cond_keys
        if not keys:
            return []
        return [", ".join(f"{key} {int(conditions[key][i])}" if len(keys) > 1 else str(int(conditions[key][i]))
                          for key in keys) for i in range(n)]
