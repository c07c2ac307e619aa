"""Convolutional autoencoder with an L2/L1 reconstruction loss; a denoising autoencoder when given a corruption."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from pixelforge.data.corruption import build_corruption
from pixelforge.metrics.reconstruction import psnr
from pixelforge.modules.autoencoder import ConvAutoencoder
from pixelforge.optim import configure_optimizer

LOSSES = {"l2": F.mse_loss, "l1": F.l1_loss}


def difference_map(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """``|x - x_hat|`` (in [0, 2]) shifted to [-1, 1] for display: black is exact, white a full-range error."""
    return (images - reconstructions).abs() - 1


class Autoencoder(L.LightningModule):
    """Deterministic autoencoder: ``decode(encode(corrupt(x)))`` is trained to match the clean ``x``.

    ``corruption`` (e.g. ``{"kind": "gaussian", "strength": 0.5}``, see ``utils.corruption``) turns it into a
    denoising autoencoder: training, validation and test all corrupt their inputs (validation and test with a
    generator seeded by the batch index, so their numbers are reproducible) and ``*/psnr_input`` reports the
    PSNR of the corrupted inputs (unclipped, as ``metrics.reconstruction``) as the baseline that ``*/psnr``
    (of reconstructions clipped to [-1, 1], as ``reconstruct`` returns them) should beat.
    """

    def __init__(
        self,
        net: ConvAutoencoder,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        loss_type: str = "l2",
        corruption: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if loss_type not in LOSSES:
            raise ValueError(f"unknown loss_type {loss_type!r}; valid: {sorted(LOSSES)}")
        if net.latent_moments != 1:
            raise ValueError(f"an autoencoder's net needs latent_moments=1, got {net.latent_moments}")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss_fn = LOSSES[loss_type]
        self.corruption = build_corruption(**corruption) if corruption else None
        self.latent_shape: tuple[int, ...] = tuple(net.latent_shape)
        self.cond_keys: list[str] = []
        self.class_counts: list[int] = []

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code of images ``x`` in [-1, 1]: ``B,*latent_shape``."""
        return self.net.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] decoded from codes ``B,*latent_shape``."""
        return self.net.decode(z).clamp(-1, 1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))`` without corruption."""
        return self.decode(self.encode(x))

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The configured corruption of ``x`` (``x`` itself for a plain autoencoder)."""
        return x if self.corruption is None else self.corruption(x, generator=generator)

    def shared_step(self, batch: Mapping[str, Any], batch_idx: int, split: str) -> torch.Tensor:
        x = batch["image"]
        generator = None if split == "train" else torch.Generator(x.device).manual_seed(batch_idx)
        inputs = self.corrupt(x, generator)
        outputs = self.net(inputs)
        loss = self.loss_fn(outputs, x)
        log = {f"{split}/loss": loss, f"{split}/psnr": psnr(x, outputs.clamp(-1, 1)).mean()}
        if self.corruption is not None:
            log[f"{split}/psnr_input"] = psnr(x, inputs).mean()
        on_step = split == "train"
        self.log_dict(log, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=not on_step)
        return loss

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, batch_idx, "train")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.shared_step(batch, batch_idx, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.shared_step(batch, batch_idx, "test")

    def configure_optimizers(self) -> dict:
        return configure_optimizer(self.parameters(), self.optimizer, self.scheduler,
                                   self.trainer.estimated_stepping_batches)

    @torch.no_grad()
    def latent_grid(self, codes: torch.Tensor, n: int) -> torch.Tensor:
        """An ``n x n`` grid of decodings spanning the 2-98 % quantiles of 2-D ``codes`` (rows: 2nd dim)."""
        low, high = torch.quantile(codes.float(), torch.tensor([0.02, 0.98], device=codes.device), dim=0)
        ticks = [torch.linspace(low[d], high[d], n, device=codes.device) for d in range(2)]
        z2, z1 = torch.meshgrid(ticks[1], ticks[0], indexing="ij")
        return self.decode(torch.stack([z1.flatten(), z2.flatten()], dim=1))

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], max_images: int = 16, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Inputs, corrupted inputs (DAE), reconstructions, |x - x_hat| maps; for a 2-D code a decoded latent grid."""
        x = batch["image"][:max_images]
        inputs = self.corrupt(x, torch.Generator(x.device).manual_seed(0))
        reconstructions = self.reconstruct(inputs)
        images = {"inputs": x}
        if self.corruption is not None:
            images["corrupted"] = inputs.clamp(-1, 1)
        images |= {"reconstructions": reconstructions, "differences": difference_map(x, reconstructions)}
        if self.latent_shape == (2,):
            images["latent_grid"] = self.latent_grid(self.encode(batch["image"]), max(2, int(max_images**0.5)))
        return images
