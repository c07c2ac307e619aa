"""Image classification: any backbone from ``modules/`` with one linear head per target attribute."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from pixelforge.optim import configure_optimizer
from pixelforge.utils.images import caption_images

CORRECT, WRONG = (80, 220, 80), (240, 70, 70)


class ImageClassifier(L.LightningModule):
    """Cross-entropy classifier over ``targets`` (batch key -> number of classes), e.g. ``{"label": 10}``.

    Several targets share the backbone (the shapes judge predicts shape, colour, size and position at
    once); the reported ``acc`` is the mean top-1 accuracy over targets, ``loss`` the sum of their losses.
    """

    def __init__(
        self,
        backbone: nn.Module,
        targets: Mapping[str, int],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not targets:
            raise ValueError("ImageClassifier needs at least one target, e.g. targets={'label': 10}")
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.backbone = backbone
        self.targets = dict(targets)
        self.heads = nn.ModuleDict({k: nn.Linear(backbone.out_features, n) for k, n in self.targets.items()})
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.label_smoothing = label_smoothing
        self.metrics = nn.ModuleDict({
            f"{split}_{key}_top{k}": MulticlassAccuracy(num_classes=n, top_k=k, average="micro")
            for split in ("train", "val", "test")
            for key, n in self.targets.items()
            for k in ((1, 5) if n > 5 else (1,))
        })

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per target for ``B,C,H,W`` images in [-1, 1]."""
        features = self.backbone(images)
        return {key: head(features) for key, head in self.heads.items()}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``B,F`` (the feature extractor for FID and similar metrics)."""
        return self.backbone(images)

    def shared_step(self, batch: dict, split: str) -> torch.Tensor:
        logits = self(batch["image"])
        losses = {key: F.cross_entropy(logits[key], batch[key], label_smoothing=self.label_smoothing)
                  for key in self.targets}
        loss = sum(losses.values())
        on_step = split == "train"
        log = {f"{split}/loss": loss}
        accuracies = []
        for key, n in self.targets.items():
            for k in (1, 5) if n > 5 else (1,):
                metric = self.metrics[f"{split}_{key}_top{k}"]
                metric(logits[key], batch[key])
                name = "acc" if k == 1 else "acc_top5"
                if len(self.targets) > 1:
                    name = f"{key}/{name}"
                    log[f"{split}/{key}/loss"] = losses[key]
                self.log(f"{split}/{name}", metric, on_step=on_step, on_epoch=True,
                         prog_bar=k == 1 and len(self.targets) == 1)
            accuracies.append((logits[key].argmax(1) == batch[key]).float().mean())
        if len(self.targets) > 1:
            log[f"{split}/acc"] = torch.stack(accuracies).mean()
        self.log_dict(log, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(batch["image"]),
                      sync_dist=not on_step)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.shared_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.shared_step(batch, "test")

    def configure_optimizers(self) -> dict:
        return configure_optimizer(self.parameters(), self.optimizer, self.scheduler,
                                   self.trainer.estimated_stepping_batches)

    @torch.no_grad()
    def log_images(self, batch: dict, max_images: int = 16, **kwargs) -> dict[str, torch.Tensor]:
        """Inputs with predicted/true labels drawn under each one (green when every target is right)."""
        images = batch["image"][:max_images]
        logits = self(images)
        texts, colors = [], []
        for i in range(len(images)):
            pred = {key: int(logits[key][i].argmax()) for key in self.targets}
            true = {key: int(batch[key][i]) for key in self.targets}
            texts.append(" ".join(f"{pred[k]}/{true[k]}" for k in self.targets))
            colors.append(CORRECT if pred == true else WRONG)
        return {"predictions": caption_images(images, texts, colors)}
