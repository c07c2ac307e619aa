"""Calls the model's ``log_images(batch)`` on a schedule and writes grids to TensorBoard and ``images/``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from pixelforge.utils.images import grid, save_png


class ImageLogger(L.Callback):
    """Logs images at training steps 1, 2, 4, ... up to ``every_n_steps`` (as CompVis), then every
    ``every_n_steps``; and on the first batch of every validation run. Images are ``B,C,H,W`` in [-1, 1];
    keys ending in ``_row`` (a diffusion or denoising progression) are laid out as one row.
    """

    def __init__(self, save_dir: str, every_n_steps: int = 500, max_images: int = 16,
                 increase_log_steps: bool = True, log_on_val: bool = True, enabled: bool = True,
                 log_images_kwargs: dict | None = None) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.save_dir = Path(save_dir)
        self.every_n_steps = every_n_steps
        self.max_images = max_images
        self.log_on_val = log_on_val
        self.enabled = enabled
        self.kwargs = dict(log_images_kwargs or {})
        self.early_steps = set()
        if increase_log_steps:
            self.early_steps = {2**i for i in range(every_n_steps.bit_length()) if 2**i < every_n_steps}

    def due(self, step: int) -> bool:
        """Whether training step ``step`` (counted from 1) gets images."""
        return step in self.early_steps or step % self.every_n_steps == 0

    def log_batch(self, trainer: L.Trainer, module: L.LightningModule, batch: dict, batch_idx: int, split: str) -> None:
        """Every rank draws the images (a sharded model's forward needs them all; under DDP the others would wait
        for rank 0 at the next step anyway); rank 0 writes them."""
        if not self.enabled or not hasattr(module, "log_images"):
            return
        was_training = module.training
        module.eval()
        with torch.no_grad():
            images = module.log_images(batch, max_images=self.max_images, split=split, **self.kwargs)
        module.train(was_training)
        if not trainer.is_global_zero:
            return
        step, epoch = trainer.global_step, trainer.current_epoch
        for key, value in images.items():
            value = value[: self.max_images]
            image = grid(value, nrow=len(value) if key.endswith("_row") else None)  # rows stay one row
            name = f"{key}_gs-{step:06d}_e-{epoch:03d}_b-{batch_idx:06d}.png"
            save_png(image, self.save_dir / split / name)
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(f"{split}/{key}", image, global_step=step)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.due(trainer.global_step):
            self.log_batch(trainer, module, batch, batch_idx, "train")

    def on_validation_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.log_on_val and batch_idx == 0 and not trainer.sanity_checking:
            self.log_batch(trainer, module, batch, batch_idx, "val")
