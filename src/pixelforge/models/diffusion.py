"""DDPM: trains a denoiser on any schedule/target/loss, keeps EMA weights, samples with any sampler."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from pixelforge.diffusion.losses import diffusion_loss, offset_noise, timestep_buckets
from pixelforge.diffusion.samplers import ClassifierFreeGuidance, build_sampler
from pixelforge.diffusion.schedule import NoiseSchedule
from pixelforge.modules.ema import EMA
from pixelforge.optim import configure_optimizer


class DDPM(L.LightningModule):
    """Denoising diffusion on images in [-1, 1]; the U-Net predicts ``prediction_type`` (eps, x0 or v).

    ``cond_key`` names the batch key(s) of class labels (``"label"``, or the shapes' attributes); labels are
    replaced by the U-Net's null label with probability ``cond_drop_prob`` during training, so
    classifier-free guidance works at sampling time. Validation and sampling use the EMA weights;
    ``clip_denoised`` keeps the samplers' x0 estimates in the data range [-1, 1]. ``compile`` runs the trained
    network through ``torch.compile`` (the EMA copy that validates and samples stays eager).
    """

    def __init__(
        self,
        unet: nn.Module,
        schedule: NoiseSchedule,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        image_size: int = 32,
        channels: int = 1,
        prediction_type: str = "eps",
        loss_type: str = "l2",
        min_snr_gamma: float | None = None,
        offset_noise_strength: float = 0.0,
        cond_key: str | Sequence[str] | None = None,
        cond_drop_prob: float = 0.1,
        ema: Mapping[str, Any] | None = None,
        log_sampler: Mapping[str, Any] | None = None,
        log_guidance_scale: float = 3.0,
        clip_denoised: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["unet", "schedule", "optimizer", "scheduler", "cond_stage"])
        self.unet = unet
        self.schedule = schedule
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.image_size = image_size
        self.channels = channels
        self.prediction_type = prediction_type
        self.loss_type = loss_type
        self.min_snr_gamma = min_snr_gamma
        self.offset_noise_strength = offset_noise_strength
        self.cond_keys = [cond_key] if isinstance(cond_key, str) else list(cond_key or [])
        if self.cond_keys and getattr(unet, "num_classes", None) is None:
            raise ValueError(f"cond_key={cond_key!r} needs a class-conditional U-Net (set unet.num_classes)")
        self.cond_drop_prob = cond_drop_prob
        self.ema = EMA(unet, **ema) if ema is not None else None
        self.log_sampler = dict(log_sampler or {"name": "ddim", "steps": 25})
        self.log_guidance_scale = log_guidance_scale
        self.clip_denoised = clip_denoised
        self.compile_unet = compile

    # ---- conditioning -------------------------------------------------------------------------------------
    @property
    def class_counts(self) -> list[int]:
        """Number of classes per conditioning key (empty for an unconditional model)."""
        return list(self.unet.num_classes) if self.cond_keys else []

    def labels(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """The batch's class labels as the U-Net takes them: ``B`` for one key, ``B,K`` for several, else None."""
        if not self.cond_keys:
            return None
        if len(self.cond_keys) == 1:
            return batch[self.cond_keys[0]]
        return torch.stack([batch[key] for key in self.cond_keys], dim=1)

    def null_labels(self, n: int) -> torch.Tensor | None:
        """The unconditional label(s) for ``n`` samples, or None for an unconditional model."""
        return self.unet.null_labels(n).to(self.device) if self.cond_keys else None

    def drop_labels(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """Replace each sample's labels by the null label with probability ``cond_drop_prob``."""
        if y is None or self.cond_drop_prob <= 0:
            return y
        drop = torch.rand(len(y), device=y.device) < self.cond_drop_prob
        null = self.null_labels(len(y))
        return torch.where(drop.view(-1, *([1] * (y.dim() - 1))), null, y)

    def condition(self, batch: Mapping[str, Any], net: nn.Module, drop: bool) -> dict[str, Any]:
        """The network's keyword conditioning for ``batch`` (labels as ``y``), dropped for guidance when ``drop``."""
        y = self.labels(batch)
        return {"y": self.drop_labels(y) if drop else y} if y is not None else {}

    # ---- what the diffusion runs on: pixels here, latents in LatentDiffusion ------------------------------
    def diffusion_input(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """x0 of the forward process for ``batch``: the images themselves."""
        return batch["image"]

    def sample_shape(self, n: int) -> tuple[int, ...]:
        """Shape of the initial noise for ``n`` samples."""
        return (n, self.channels, self.image_size, self.image_size)

    def network(self, use_ema: bool = True) -> nn.Module:
        """The EMA (default) or the live denoising network."""
        return self.ema.module if use_ema and self.ema is not None else self.unet

    # ---- training -----------------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any], net: nn.Module, drop: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample diffusion loss at random timesteps, and those timesteps."""
        x0 = self.diffusion_input(batch)
        t = torch.randint(0, self.schedule.num_timesteps, (len(x0),), device=x0.device)
        if self.offset_noise_strength > 0:
            noise = offset_noise(x0.shape, self.offset_noise_strength, device=x0.device).to(x0.dtype)
        else:
            noise = torch.randn_like(x0)
        pred = net(self.schedule.q_sample(x0, t, noise), t, **self.condition(batch, net, drop))
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
        loss, t = self.loss(batch, self.unet, drop=True)
        self.log_loss(loss, t, "train")
        return loss.mean()

    def on_fit_start(self) -> None:
        """With ``compile``, ``torch.compile`` the trained network in place (state-dict keys unchanged)."""
        if self.compile_unet:
            self.unet.compile()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.unet)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        loss, t = self.loss(batch, self.network(), drop=False)
        self.log_loss(loss, t, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        loss, t = self.loss(batch, self.network(), drop=False)
        self.log_loss(loss, t, "test")

    def configure_optimizers(self) -> dict:
        return configure_optimizer(self.unet.parameters(), self.optimizer, self.scheduler,
                                   self.trainer.estimated_stepping_batches)

    # ---- sampling -----------------------------------------------------------------------------------------
    def denoiser(self, use_ema: bool = True) -> Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]:
        """``(x_t, t, cond) -> prediction`` over the EMA (default) or the live weights; ``cond`` is a keyword dict."""
        net = self.network(use_ema)
        return lambda x, t, cond: net(x, t, **cond)

    @torch.no_grad()
    def run_sampler(
        self,
        noise: torch.Tensor,
        cond: dict[str, Any],
        uncond: dict[str, Any] | None = None,
        sampler: str = "ddim",
        steps: int | None = 50,
        scale: float = 1.0,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        callback: Callable | None = None,
        progress: bool = False,
        strength: float | None = None,
        init: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        **sampler_kwargs: Any,
    ) -> torch.Tensor:
        """Run a registered sampler from ``noise`` under ``cond``, guided against ``uncond`` when ``scale`` != 1.

        With ``init`` (clean data in the diffusion's space) and ``strength`` the sampler starts from ``init``
        re-noised part way (img2img); with ``init`` and ``mask`` (1 = keep ``init``) it inpaints the rest.
        """
        model = self.denoiser(use_ema)
        if scale != 1.0:
            if uncond is None:
                raise ValueError(f"guidance scale {scale} needs a conditional model and a condition; this one has "
                                 "none (use scale 1)")
            model = ClassifierFreeGuidance(model, scale, uncond)
        clip = 1.0 if self.clip_denoised else None
        chosen = build_sampler(sampler, self.schedule, self.prediction_type, steps, clip_x0=clip, **sampler_kwargs)
        start = 0
        if strength is not None:
            if init is None:
                raise ValueError("strength needs an initial image (init)")
            start = chosen.start_index(strength)
            t = chosen.timesteps()[start].to(noise.device).expand(len(noise))
            noise = self.schedule.q_sample(init, t, noise)
        known = init if mask is not None else None
        return chosen.sample(model, noise, cond=cond, generator=generator, callback=callback, progress=progress,
                             start=start, known=known, mask=mask)

    @torch.no_grad()
    def sample(
        self,
        n: int | None = None,
        labels: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        sampler: str = "ddim",
        steps: int | None = 50,
        scale: float = 1.0,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        callback: Callable | None = None,
        progress: bool = False,
        **sampler_kwargs: Any,
    ) -> torch.Tensor:
        """Generate images in [-1, 1]: ``n`` of them, or one per row of ``labels`` / per ``noise`` tensor.

        ``scale`` > 1 applies classifier-free guidance against the null label. ``noise`` fixes the
        initial latent for reproducibility; otherwise it is drawn from ``generator``.
        """
        if noise is None:
            noise = torch.randn(self.sample_shape(n if n is not None else len(labels)), generator=generator,
                                device=self.device)
        if self.cond_keys and labels is None:
            labels = self.null_labels(len(noise))
        if labels is None and scale != 1.0:
            raise ValueError(f"guidance scale {scale} needs labels; this model is unconditional")
        cond = {"y": labels} if labels is not None else {}
        uncond = {"y": self.null_labels(len(noise))} if labels is not None else None
        x = self.run_sampler(noise, cond, uncond, sampler, steps, scale, generator, use_ema, callback, progress,
                             **sampler_kwargs)
        return x.clamp(-1, 1)

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], max_images: int = 16, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Inputs, a forward-diffusion row, guided samples (with the batch's labels) and a denoising row."""
        x0 = batch["image"][:max_images]
        n = len(x0)
        images = {"inputs": x0}
        ts = torch.linspace(0, self.schedule.num_timesteps - 1, 8, device=self.device).long()
        noise = torch.randn_like(x0[:1]).expand(len(ts), -1, -1, -1)
        images["diffusion_row"] = self.schedule.q_sample(x0[:1].expand(len(ts), -1, -1, -1), ts, noise)
        labels = self.labels(batch)
        labels = labels[:n] if labels is not None else None
        generator = torch.Generator(self.device).manual_seed(0)
        trajectory: list[torch.Tensor] = []
        samples = self.sample(n, labels=labels, sampler=self.log_sampler["name"],
                              steps=self.log_sampler.get("steps"), generator=generator,
                              scale=self.log_guidance_scale if labels is not None else 1.0,
                              callback=lambda i, x, x0_pred: trajectory.append(x0_pred[:1]))
        images["samples"] = samples
        keep = torch.linspace(0, len(trajectory) - 1, min(8, len(trajectory))).long().tolist()
        images["denoise_row"] = torch.cat([trajectory[i] for i in keep]).clamp(-1, 1)
        return images
