"""Feature extractors for FID/KID: a classifier this codebase trained (offline), or torchmetrics' Inception."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pixelforge.protocols import Classifies
from pixelforge.runs import find_checkpoint, load_run


class ClassifierFeatures(nn.Module):
    """Penultimate features and predictions of a pixelforge ``ImageClassifier`` run, frozen.

    ``name`` identifies the extractor in cache keys: the checkpoint path and its modification time, so
    statistics are recomputed when the classifier is retrained.
    """

    def __init__(self, run: str | Path) -> None:
        super().__init__()
        ckpt, _ = find_checkpoint(run)
        _, classifier = load_run(run)
        if not isinstance(classifier, Classifies):
            raise ValueError(f"{run} is not a classifier run (its model has no features(); got "
                             f"{type(classifier).__name__})")
        self.classifier = classifier.eval().requires_grad_(False)
        self.name = f"classifier:{ckpt.resolve()}@{int(ckpt.stat().st_mtime)}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``B,C,H,W`` in [-1, 1] -> ``B,F`` float64 features."""
        return self.classifier.features(images).double()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted class per target (``{"label": B}`` or one entry per attribute)."""
        return {key: logits.argmax(1) for key, logits in self.classifier(images).items()}


class InceptionFeatures(nn.Module):
    """torchmetrics' FID Inception-v3 (2048-d pool features) for users who have its weights locally."""

    def __init__(self, feature: int = 2048) -> None:
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as error:  # torch-fidelity missing
            raise ImportError("Inception features need `pip install torch-fidelity` and its downloaded weights; "
                              "use the default classifier features offline") from error
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(feature)])
        self.name = f"inception:{feature}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        uint8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(uint8).double()


def build_feature_extractor(kind: str = "classifier", run: str | Path | None = None) -> nn.Module:
    """``kind="classifier"`` with ``run`` (a classifier's run directory or checkpoint), or ``"inception"``."""
    if kind == "classifier":
        if run is None:
            raise ValueError("classifier features need the run directory or checkpoint of a classifier trained "
                             "on the same data, e.g. logs/<date>_classifier_cnn_mnist5k")
        return ClassifierFeatures(run)
    if kind == "inception":
        return InceptionFeatures()
    raise ValueError(f"unknown feature extractor {kind!r}; valid: 'classifier', 'inception'")
