"""Shared LightningModule of latent-diffusion first stages (KL autoencoder, VQ model), after taming-transformers.

``loss = L1 (or L2) + perceptual + regulariser (KL or VQ) + adaptive_weight * GAN``; the optional PatchGAN
discriminator trains with a second optimiser from ``disc_start`` on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from pixelforge.adversarial.losses import check_loss, discriminator_loss, generator_loss
from pixelforge.metrics.features import ClassifierFeatures
from pixelforge.metrics.fid import fid
from pixelforge.metrics.reconstruction import psnr, ssim
from pixelforge.models.autoencoder import LOSSES, difference_map
from pixelforge.modules.augment import random_crops
from pixelforge.modules.first_stage import Decoder, Encoder, downsample_factor
from pixelforge.optim import configure_optimizer, optimizer_step
from pixelforge.runs import load_run, model_config

PERCEPTUAL_KEYS = {"run", "weight"}


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """taming-transformers' GAN weight ``||grad nll|| / (||grad g_loss|| + 1e-4)`` at the decoder's last layer.

    It balances the two gradients where they meet the image, so the adversarial term neither drowns the
    reconstruction nor vanishes; clamped to [0, ``max_weight``] and detached.
    """
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def build_perceptual(perceptual: Mapping[str, Any] | None) -> tuple[nn.Module | None, float]:
    """The frozen classifier of ``{"run": PATH, "weight": w}`` (a pixelforge classifier run) and its weight."""
    if perceptual is None:
        return None, 0.0
    if set(perceptual) != PERCEPTUAL_KEYS:
        raise ValueError(f"perceptual needs exactly the keys {sorted(PERCEPTUAL_KEYS)} (or null), got "
                         f"{sorted(perceptual)}")
    return ClassifierFeatures(perceptual["run"]).classifier, float(perceptual["weight"])


def build_rfid_features(run: str | None) -> nn.Module | None:
    """The frozen feature extractor of a pixelforge classifier run for rFID, or None without one."""
    if run is None:
        return None
    return ClassifierFeatures(run)


class FirstStageModel(L.LightningModule):
    """Encoder -> 1x1 ``quant_conv`` -> latent ``embed_dim x H/f x W/f`` -> 1x1 ``post_quant_conv`` -> Decoder.

    ``ddconfig`` holds the CompVis encoder/decoder keys (``in_channels``, ``ch``, ``ch_mult``, ``num_res_blocks``,
    ``z_channels``, ``dropout``, ``num_groups``, ``patch_size``); subclasses add the latent regulariser through
    ``forward``.

    The reconstruction term is the per-pixel mean L1 (CompVis; ``loss_type: l2`` optimises PSNR directly) plus,
    with ``perceptual``, ``weight`` times the squared distance of the L2-normalised penultimate features of a
    frozen pixelforge classifier (offline stand-in for LPIPS). With a ``discriminator`` the model optimises
    manually: each batch takes one autoencoder step and, from the ``disc_start``-th batch on, the GAN term
    (``disc_loss`` hinge | bce) joins its loss and one discriminator step follows. Lightning's ``global_step``
    counts both, so ``trainer.max_steps`` counts autoencoder + discriminator steps.

    ``train_crop`` trains on random crops on the latent grid (in the first ``train_crop_epochs`` epochs, or all),
    as Stable Diffusion's first stage trained on 256 px crops and runs at 512: a convolutional code is local.

    Validation and test log PSNR/SSIM of the deterministic reconstructions and, with ``rfid_run`` (a classifier
    run on the same data), rFID: the FID between the classifier features of the inputs and of their
    reconstructions over the whole split (per process under DDP).
    """

    double_z = False  # whether the encoder outputs mean and log-variance (KL) or one latent (VQ)

    def __init__(
        self,
        ddconfig: Mapping[str, Any],
        embed_dim: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        image_size: int = 32,
        loss_type: str = "l1",
        perceptual: Mapping[str, Any] | None = None,
        discriminator: nn.Module | None = None,
        disc_loss: str = "hinge",
        disc_start: int = 0,
        disc_weight: float = 1.0,
        use_adaptive_weight: bool = True,
        rfid_run: str | None = None,
        train_crop: int | None = None,
        train_crop_epochs: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["discriminator", "optimizer", "scheduler"])
        check_loss(disc_loss)
        if loss_type not in LOSSES:
            raise ValueError(f"unknown loss_type {loss_type!r}; valid: {sorted(LOSSES)}")
        if disc_loss == "wasserstein" or disc_start < 0:
            raise ValueError(f"need disc_loss in ('hinge', 'bce') and disc_start >= 0, got {disc_loss!r}, "
                             f"{disc_start}")
        missing = {"ch_mult", "z_channels"} - set(ddconfig)
        if missing:
            raise ValueError(f"ddconfig lacks {sorted(missing)}; it takes in_channels, ch, ch_mult, num_res_blocks, "
                             f"z_channels, dropout, num_groups, norm_eps, asymmetric_downsample and patch_size, got "
                             f"{sorted(ddconfig)}")
        config = dict(ddconfig)
        channels = config.pop("in_channels", 3)
        asymmetric = config.pop("asymmetric_downsample", False)  # the encoder's alone
        self.encoder = Encoder(channels, double_z=self.double_z, asymmetric_downsample=asymmetric, **config)
        self.decoder = Decoder(channels, **config)
        moments = 2 if self.double_z else 1
        self.quant_conv = nn.Conv2d(moments * config["z_channels"], moments * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, config["z_channels"], 1)
        self.embed_dim = embed_dim
        self.in_channels = channels
        self.downsample_factor = downsample_factor(config["ch_mult"], config.get("patch_size", 1))
        if image_size % self.downsample_factor:
            raise ValueError(f"image_size {image_size} is not divisible by the downsample factor "
                             f"{self.downsample_factor} of ch_mult {list(config['ch_mult'])} and patch_size "
                             f"{config.get('patch_size', 1)}")
        side = image_size // self.downsample_factor
        if train_crop is not None and not (0 < train_crop < image_size and train_crop % self.downsample_factor == 0):
            raise ValueError(f"train_crop {train_crop} must be a multiple of the downsample factor "
                             f"{self.downsample_factor} below image_size {image_size} (or null: whole images)")
        if train_crop_epochs is not None and train_crop_epochs < 0:
            raise ValueError(f"train_crop_epochs must be >= 0 (or null: every epoch), got {train_crop_epochs}")
        self.train_crop, self.train_crop_epochs = train_crop, train_crop_epochs
        self.latent_shape: tuple[int, ...] = (embed_dim, side, side)
        self.rec_loss = LOSSES[loss_type]
        self.perceptual_net, self.perceptual_weight = build_perceptual(perceptual)
        self.discriminator = discriminator
        self.disc_loss, self.disc_start, self.disc_weight = disc_loss, disc_start, disc_weight
        self.use_adaptive_weight = use_adaptive_weight
        self.automatic_optimization = discriminator is None
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.rfid_features = build_rfid_features(rfid_run)
        self.rfid_cache: dict[str, list[torch.Tensor]] = {"real": [], "fake": []}
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))  # for disc_start, saved on resume
        self.cond_keys: list[str] = []
        self.class_counts: list[int] = []

    # ---- interface used by latent diffusion and the scripts ------------------------------------------------
    def encode_latent(self, x: torch.Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """The latent ``B,embed_dim,h,w`` that latent diffusion models for images ``x`` in [-1, 1]."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from latents ``B,embed_dim,h,w``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(unclamped reconstruction, weighted regulariser loss, regulariser logs) of images ``x``."""
        raise NotImplementedError

    def random_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` random latents to decode as a glimpse of the latent space (not a generative model)."""
        raise NotImplementedError

    def decoder_output(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's unbounded output for a (quantised) latent."""
        return self.decoder(self.post_quant_conv(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode_latent(x))``: the deterministic reconstruction in [-1, 1]."""
        return self.decode(self.encode_latent(x))

    # ---- losses -------------------------------------------------------------------------------------------
    def reconstruction_loss(self, x: torch.Tensor, reconstruction: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-pixel mean L1 (or L2) and, if configured, the perceptual feature distance, summed into ``nll``."""
        terms = {"rec": self.rec_loss(reconstruction, x)}
        terms["nll"] = terms["rec"]
        if self.perceptual_net is not None:
            features = [F.normalize(self.perceptual_net.features(t), dim=1) for t in (x, reconstruction)]
            terms["perceptual"] = (features[0] - features[1]).pow(2).sum(1).mean()
            terms["nll"] = terms["nll"] + self.perceptual_weight * terms["perceptual"]
        return terms

    def autoencoder_terms(self, x: torch.Tensor, adversarial: bool) -> dict[str, torch.Tensor]:
        """The autoencoder's loss terms (``loss`` is their total), with the GAN term when ``adversarial``."""
        reconstruction, regulariser, logs = self(x)
        terms = self.reconstruction_loss(x, reconstruction)
        terms |= {"reg": regulariser, "loss": terms["nll"] + regulariser, "reconstruction": reconstruction, **logs}
        if adversarial:
            terms["g_loss"] = generator_loss(self.discriminator(reconstruction), self.disc_loss)
            weight = self.disc_weight
            if self.use_adaptive_weight:
                weight = weight * adaptive_weight(terms["nll"], terms["g_loss"], self.decoder.last_layer)
            terms["d_weight"] = torch.as_tensor(weight)
            terms["loss"] = terms["loss"] + weight * terms["g_loss"]
        return terms

    def discriminator_terms(self, x: torch.Tensor, reconstruction: torch.Tensor) -> dict[str, torch.Tensor]:
        """The discriminator's loss on real images vs (detached) reconstructions, and its mean logits."""
        real, fake = self.discriminator(x), self.discriminator(reconstruction.detach())
        return {"d_loss": discriminator_loss(real, fake, self.disc_loss), "logits_real": real.detach().mean(),
                "logits_fake": fake.detach().mean()}

    # ---- training -----------------------------------------------------------------------------------------
    def log_terms(self, terms: Mapping[str, torch.Tensor], split: str, batch_size: int) -> None:
        """Log every scalar term as ``split/name`` (the total ``loss`` on the progress bar)."""
        scalars = {f"{split}/{k}": v.detach() for k, v in terms.items() if v.dim() == 0}
        on_step = split == "train"
        self.log(f"{split}/loss", scalars.pop(f"{split}/loss"), on_step=on_step, on_epoch=not on_step, prog_bar=True,
                 batch_size=batch_size, sync_dist=not on_step)
        self.log_dict(scalars, on_step=on_step, on_epoch=not on_step, batch_size=batch_size, sync_dist=not on_step)

    def training_images(self, x: torch.Tensor) -> torch.Tensor:
        """The batch the autoencoder trains on: with ``train_crop``, a random crop of each image on the latent grid
        during the first ``train_crop_epochs`` epochs (all with null). Convolutions see the same local structure in
        crops at a fraction of a step's arithmetic; the whole-image epochs after them fit the rest."""
        cropping = self.train_crop is not None and (self.train_crop_epochs is None
                                                     or self.current_epoch < self.train_crop_epochs)
        return random_crops(x, self.train_crop, self.downsample_factor) if cropping else x

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        x = self.training_images(batch["image"])
        if self.discriminator is None:
            terms = self.autoencoder_terms(x, adversarial=False)
            self.log_terms(terms, "train", len(x))
            return terms["loss"]
        ae_opt, d_opt = self.optimizers()
        ae_sched, d_sched = self.lr_schedulers() or (None, None)
        adversarial = int(self.batches_seen) >= self.disc_start
        self.batches_seen += 1
        with self.toggled_optimizer(ae_opt):
            terms = self.autoencoder_terms(x, adversarial)
            optimizer_step(self, ae_opt, terms["loss"], ae_sched)
        if adversarial:
            with self.toggled_optimizer(d_opt):
                d_terms = self.discriminator_terms(x, terms["reconstruction"])
                optimizer_step(self, d_opt, d_terms["d_loss"], d_sched)
            terms |= d_terms
        self.log_terms(terms, "train", len(x))
        return None

    def configure_optimizers(self) -> dict | list[dict]:
        """The autoencoder's optimizer (and schedule); with a discriminator, [autoencoder's, discriminator's]."""
        total = self.trainer.estimated_stepping_batches
        skip = ("discriminator.", "perceptual_net.")
        ae_params = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith(skip)]
        ae = configure_optimizer(ae_params, self.optimizer, self.scheduler, total)
        if self.discriminator is None:
            return ae
        return [ae, configure_optimizer(self.discriminator.parameters(), self.optimizer, self.scheduler, total)]

    # ---- evaluation ---------------------------------------------------------------------------------------
    def evaluate(self, batch: Mapping[str, Any], split: str) -> None:
        """Loss terms of the deterministic reconstruction (eval mode) and its PSNR/SSIM on clipped images."""
        x = batch["image"]
        terms = self.autoencoder_terms(x, adversarial=False)
        reconstruction = terms["reconstruction"].clamp(-1, 1)
        terms |= {"psnr": psnr(x, reconstruction).mean(), "ssim": ssim(x, reconstruction).mean()}
        self.log_terms(terms, split, len(x))
        if self.rfid_features is not None:
            self.rfid_cache["real"].append(self.rfid_features(x).cpu())
            self.rfid_cache["fake"].append(self.rfid_features(reconstruction).cpu())

    def log_rfid(self, split: str) -> None:
        """Log the FID between the split's input and reconstruction features (with ``rfid_run``), then reset."""
        if self.rfid_features is None or not self.rfid_cache["real"]:
            return
        real, fake = (torch.cat(self.rfid_cache[k]) for k in ("real", "fake"))
        self.rfid_cache = {"real": [], "fake": []}
        self.log(f"{split}/rfid", fid(real, fake), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.log_rfid("val")

    def on_test_epoch_end(self) -> None:
        self.log_rfid("test")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, "test")

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], max_images: int = 16, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Inputs, reconstructions, |x - x_hat| maps and decodings of random latents."""
        x = batch["image"][:max_images]
        reconstructions = self.reconstruct(x)
        samples = self.decode(self.random_latents(len(x), torch.Generator(self.device).manual_seed(0)))
        return {"inputs": x, "reconstructions": reconstructions,
                "differences": difference_map(x, reconstructions), "samples": samples}


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
