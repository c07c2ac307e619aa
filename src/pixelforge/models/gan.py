"""GAN: alternating discriminator/generator updates (manual optimisation), EMA generator, failure detection."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchvision.utils import make_grid

from pixelforge.adversarial.diffaugment import diff_augment, parse_policy
from pixelforge.adversarial.losses import check_loss, discriminator_loss, generator_loss, gradient_penalty, r1_penalty
from pixelforge.modules.ema import EMA
from pixelforge.optim import optimizer_step


class GAN(L.LightningModule):
    """Generator vs discriminator on images in [-1, 1] with ``loss`` in bce (non-saturating) | hinge | wasserstein.

    Every training batch is one D step; the first of every ``n_critic`` batches is followed by one G step on fresh
    noise.
    Lightning's ``global_step`` counts the optimizer steps of both, so ``trainer.max_steps`` counts D + G steps
    (with ``n_critic=1``, two per batch). The two optimizers share ``optimizer`` (its class and betas) with their own
    learning rates ``g_lr`` and ``d_lr`` (TTUR, Heusel et al.). Optional D regularisers: WGAN-GP (``gp_weight``),
    R1 (``r1_gamma``), spectral norm (in the discriminator's config) and DiffAugment (``diffaugment``, e.g.
    ``"color,translation,cutout"``) on real and fake images before D. With ``cond_key`` the generator and the
    (projection) discriminator get the batch's labels.

    Sampling and validation use the EMA generator. D(G(z)) outside
    [``collapse_threshold``, 1 - ``collapse_threshold``] (as a sigmoid probability) for ``collapse_patience``
    consecutive D steps warns once, and stops training too with ``stop_on_collapse``.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        g_lr: float = 2e-4,
        d_lr: float = 2e-4,
        scheduler: None = None,
        image_size: int = 32,
        channels: int = 1,
        loss: str = "bce",
        n_critic: int = 1,
        gp_weight: float = 0.0,
        r1_gamma: float = 0.0,
        diffaugment: str | None = None,
        cond_key: str | None = None,
        ema: Mapping[str, Any] | None = None,
        num_fixed: int = 64,
        collapse_threshold: float = 0.01,
        collapse_patience: int = 200,
        stop_on_collapse: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["generator", "discriminator", "optimizer", "scheduler"])
        check_loss(loss)
        parse_policy(diffaugment)
        if scheduler is not None:
            raise ValueError("GAN trains with constant learning rates: use scheduler=none (override /scheduler: none)")
        if getattr(optimizer, "keywords", {}).get("lr") is not None:
            raise ValueError(f"model.optimizer.lr={optimizer.keywords['lr']} is ignored by GAN: set model.g_lr and "
                             "model.d_lr (the two-timescale learning rates) instead")
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        g_classes, d_classes = getattr(generator, "num_classes", None), getattr(discriminator, "num_classes", None)
        if (cond_key is None) != (g_classes is None) or g_classes != d_classes:
            raise ValueError(f"cond_key={cond_key!r} needs a generator and a discriminator with the same num_classes "
                             f"(and none without cond_key); got {g_classes} and {d_classes}")
        self.automatic_optimization = False
        self.generator = generator
        self.discriminator = discriminator
        self.optimizer = optimizer
        self.g_lr, self.d_lr = g_lr, d_lr
        self.image_size, self.channels = image_size, channels
        self.loss = loss
        self.n_critic = n_critic
        self.gp_weight, self.r1_gamma = gp_weight, r1_gamma
        self.diffaugment = diffaugment
        self.cond_keys = [cond_key] if cond_key else []
        self.class_counts = [g_classes] if cond_key else []
        self.ema = EMA(generator, **ema) if ema is not None else None
        self.collapse_threshold, self.collapse_patience = collapse_threshold, collapse_patience
        self.stop_on_collapse = stop_on_collapse
        self.collapsed_steps = 0
        self.register_buffer("fixed_z", torch.randn(num_fixed, generator.z_dim,
                                                    generator=torch.Generator().manual_seed(0)))

    # ---- generator and discriminator -----------------------------------------------------------------------
    def labels(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """The batch's class labels for a conditional GAN, else None."""
        return batch[self.cond_keys[0]] if self.cond_keys else None

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` latent vectors z ~ N(0, I) on the model's device."""
        return torch.randn(n, self.generator.z_dim, generator=generator, device=self.device)

    def critic(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """D's raw outputs ``B`` on DiffAugment-ed images (plain images without a policy)."""
        return self.discriminator(diff_augment(x, self.diffaugment), y)

    # ---- training -----------------------------------------------------------------------------------------
    def discriminator_step(self, real: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """D's loss (with penalties) on a real batch and as many fakes, and what is logged about it."""
        with torch.no_grad():
            fake = self.generator(self.noise(len(real)), y)
        if self.r1_gamma > 0:
            real = real.detach().requires_grad_(True)
        d_real, d_fake = self.critic(real, y), self.critic(fake, y)
        logs = {"d_loss": discriminator_loss(d_real, d_fake, self.loss), "d_real": d_real.detach().mean(),
                "d_fake": d_fake.detach().mean(), "d_fake_prob": torch.sigmoid(d_fake.detach()).mean()}
        total = logs["d_loss"]
        if self.gp_weight > 0:
            logs["gp"] = gradient_penalty(lambda x: self.discriminator(x, y), real, fake, self.gp_weight)
            total = total + logs["gp"]
        if self.r1_gamma > 0:
            logs["r1"] = r1_penalty(d_real, real, self.r1_gamma)
            total = total + logs["r1"]
        return {"total": total, **logs}

    def generator_step(self, n: int, y: torch.Tensor | None) -> torch.Tensor:
        """G's loss on ``n`` fresh fakes (labels ``y`` for a conditional GAN)."""
        return generator_loss(self.critic(self.generator(self.noise(n), y), y), self.loss)

    def watch_collapse(self, d_fake_prob: float) -> None:
        """Warn once when D(G(z)) stays saturated for ``collapse_patience`` D steps (not for the Wasserstein critic)."""
        if self.loss == "wasserstein":
            return
        saturated = not self.collapse_threshold <= d_fake_prob <= 1 - self.collapse_threshold
        self.collapsed_steps = self.collapsed_steps + 1 if saturated else 0
        if self.collapsed_steps == self.collapse_patience:
            rank_zero_warn(f"D(G(z)) = {d_fake_prob:.4f} has been outside [{self.collapse_threshold}, "
                           f"{1 - self.collapse_threshold}] for {self.collapse_patience} D steps: the discriminator "
                           "wins (or lost) outright and G gets no useful gradient; try a lower d_lr, spectral norm, "
                           "R1 or DiffAugment" + ("; stopping" if self.stop_on_collapse else ""))
            self.trainer.should_stop = self.trainer.should_stop or self.stop_on_collapse

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        real, y = batch["image"], self.labels(batch)
        d_opt, g_opt = self.optimizers()
        with self.toggled_optimizer(d_opt):
            d = self.discriminator_step(real, y)
            optimizer_step(self, d_opt, d["total"])
        self.log_dict({f"train/{k}": v.detach() for k, v in d.items() if k != "total"}, prog_bar=False,
                      batch_size=len(real))
        self.watch_collapse(float(d["d_fake_prob"]))
        if batch_idx % self.n_critic:  # G steps on the first batch of each cycle: max_steps=2 is one D + one G step
            return
        with self.toggled_optimizer(g_opt):
            g_loss = self.generator_step(len(real), y)
            optimizer_step(self, g_opt, g_loss)
        if self.ema is not None:
            self.ema.update(self.generator)
        self.log("train/g_loss", g_loss.detach(), prog_bar=True, batch_size=len(real))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """[D's optimizer, G's optimizer], in the order ``training_step`` unpacks them."""
        return [self.optimizer(self.discriminator.parameters(), lr=self.d_lr),
                self.optimizer(self.generator.parameters(), lr=self.g_lr)]

    # ---- evaluation ---------------------------------------------------------------------------------------
    def evaluate(self, batch: Mapping[str, Any], split: str) -> None:
        """D's mean outputs and loss on held-out real images vs as many EMA samples (no augmentation)."""
        real, y = batch["image"], self.labels(batch)
        d_real = self.discriminator(real, y)
        d_fake = self.discriminator(self.sample(len(real), labels=y), y)
        self.log_dict({f"{split}/d_real": d_real.mean(), f"{split}/d_fake": d_fake.mean(),
                       f"{split}/d_loss": discriminator_loss(d_real, d_fake, self.loss)},
                      batch_size=len(real), sync_dist=True)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, "test")

    # ---- sampling -----------------------------------------------------------------------------------------
    def sampling_generator(self, use_ema: bool = True) -> nn.Module:
        """The EMA generator (default, when there is one) or the live one."""
        return self.ema.module if use_ema and self.ema is not None else self.generator

    @torch.no_grad()
    def sample(self, n: int | None = None, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, use_ema: bool = True) -> torch.Tensor:
        """``n`` images in [-1, 1] (or one per label); a conditional GAN draws uniform classes without ``labels``."""
        if labels is not None and not self.cond_keys:
            raise ValueError("labels given, but this GAN is unconditional (cond_key=None)")
        if n is None and labels is None:
            raise ValueError("give the number of samples n, or labels (one sample each)")
        if n is not None and labels is not None and n != len(labels):
            raise ValueError(f"n={n} does not match the {len(labels)} labels given")
        count = n if n is not None else len(labels)
        if self.cond_keys and labels is None:
            labels = torch.randint(self.class_counts[0], (count,), generator=generator, device=self.device)
        z = self.noise(count, generator)
        return self.sampling_generator(use_ema)(z, labels.to(self.device) if labels is not None else None)

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], max_images: int = 16, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Real inputs and the fixed-noise samples (EMA and live G); a conditional GAN gives one row per class.

        The class grid (fixed z per column, so each column keeps its style across classes) is returned as one image,
        so that it is not cut to ``max_images``.
        """
        images = {"inputs": batch["image"][:max_images]}
        if not self.cond_keys:
            z = self.fixed_z[:max_images]
            images["samples"] = self.sampling_generator(True)(z)
            images["samples_live"] = self.sampling_generator(False)(z)
            return images
        classes, per_class = self.class_counts[0], min(max_images, len(self.fixed_z))
        z = self.fixed_z[:per_class].repeat(classes, 1)
        y = torch.arange(classes, device=self.device).repeat_interleave(per_class)
        for name, use_ema in (("class_grid", True), ("class_grid_live", False)):
            samples = self.sampling_generator(use_ema)(z, y)
            images[name] = make_grid(samples, nrow=per_class, padding=2, pad_value=-1)[None]
        return images
