"""SimCLR: self-supervised features from two random views of every image (Chen et al. 2020)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from pixelforge.contrastive.knn import knn_predict
from pixelforge.contrastive.losses import nt_xent
from pixelforge.modules.augment import ViewAugment
from pixelforge.modules.projection import ProjectionHead
from pixelforge.optim import configure_optimizer

KNN = {"k": 200, "temperature": 0.1, "bank_size": 10000}


class SimCLR(L.LightningModule):
    """A ``backbone`` from ``modules/`` and a projection head trained with NT-Xent (``temperature``) over the global
    batch: each image's two ``augment`` views must find each other among all views of the batch.

    Validation and test never train on labels: the views' loss, and a kNN monitor (``knn``: ``k``, vote
    ``temperature``, ``bank_size`` training images) that classifies each frozen feature by its nearest training
    features, for every target of ``targets`` (batch key -> class count; none: no monitor)."""

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        augment: ViewAugment | None = None,
        projection: Mapping[str, Any] | None = None,
        temperature: float = 0.5,
        targets: Mapping[str, int] | None = None,
        knn: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler", "augment"])
        self.backbone = backbone
        self.head = ProjectionHead(backbone.out_features, **(projection or {}))
        self.augment = augment if augment is not None else ViewAugment()
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.temperature = temperature
        self.targets = dict(targets or {})
        unknown = set(knn or {}) - set(KNN)
        if unknown:
            raise ValueError(f"unknown knn option(s) {sorted(unknown)}; valid: {sorted(KNN)}")
        self.knn = {**KNN, **(knn or {})}
        self.outputs: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's features ``B,F`` of ``B,C,H,W`` images in [-1, 1]: what downstream tasks use."""
        return self.backbone(images)

    def views(self, images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """Two random views of every image."""
        return self.augment(images, generator), self.augment(images, generator)

    def loss(self, images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """(NT-Xent of two views of ``images``, the share of views whose nearest other view is their pair)."""
        z = self.head(self.backbone(torch.cat(self.views(images, generator))))
        return nt_xent(*z.chunk(2), temperature=self.temperature)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, accuracy = self.loss(batch["image"])
        self.log_dict({"train/loss": loss, "train/pair_acc": accuracy}, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def evaluation_step(self, batch: dict, batch_idx: int, split: str) -> None:
        """The loss of views drawn from a seed per batch (comparable across epochs), and the features to vote on."""
        loss, accuracy = self.loss(batch["image"], torch.Generator().manual_seed(batch_idx))
        self.log_dict({f"{split}/loss": loss, f"{split}/pair_acc": accuracy}, prog_bar=True, sync_dist=True,
                      batch_size=len(batch["image"]))
        if self.targets:
            self.outputs.append((self.embed(batch["image"]), {key: batch[key] for key in self.targets}))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, batch_idx, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_knn("val")

    def on_test_epoch_end(self) -> None:
        self.log_knn("test")

    def log_knn(self, split: str) -> None:
        """``split/knn_acc`` (mean over targets, and ``split/knn/<target>`` for several) of the collected features."""
        outputs, self.outputs = self.outputs, []
        datamodule = getattr(self.trainer, "datamodule", None)
        if not outputs or datamodule is None or self.trainer.sanity_checking:  # the bank costs a pass over it
            return
        queries = torch.cat([features for features, _ in outputs])
        bank, bank_labels = self.knn_bank(datamodule)
        accuracies = {}
        for key, classes in self.targets.items():
            labels = torch.cat([batch_labels[key] for _, batch_labels in outputs])
            predicted = knn_predict(queries, bank, bank_labels[key], classes, self.knn["k"], self.knn["temperature"])
            accuracies[key] = (predicted == labels).float().mean()
        log = {f"{split}/knn_acc": torch.stack(list(accuracies.values())).mean()}
        if len(accuracies) > 1:
            log.update({f"{split}/knn/{key}": value for key, value in accuracies.items()})
        self.log_dict(log, prog_bar=True, sync_dist=True)

    @torch.no_grad()
    def knn_bank(self, datamodule: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Features and labels of the first ``bank_size`` training images (unaugmented), from every rank."""
        dataset = datamodule.build("train")
        indices = range(self.global_rank, min(len(dataset), self.knn["bank_size"]), self.trainer.world_size)
        features, labels = [], {key: [] for key in self.targets}
        for batch in DataLoader(Subset(dataset, indices), batch_size=datamodule.eval_batch_size):
            features.append(self.embed(batch["image"].to(self.device)))
            for key in self.targets:
                labels[key].append(batch[key].to(self.device))
        gathered = [torch.cat(features), *(torch.cat(values) for values in labels.values())]
        if self.trainer.world_size > 1:
            gathered = [self.all_gather(t).flatten(0, 1) for t in gathered]
        return gathered[0], dict(zip(labels, gathered[1:], strict=True))

    def configure_optimizers(self) -> dict:
        return configure_optimizer(self.parameters(), self.optimizer, self.scheduler,
                                   self.trainer.estimated_stepping_batches)

    @torch.no_grad()
    def log_images(self, batch: dict, max_images: int = 16, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Each image beside its two views, as the loss sees them."""
        images = batch["image"][:max_images]
        first, second = self.views(images)
        return {"views": torch.cat([images, first, second], dim=-1)}
