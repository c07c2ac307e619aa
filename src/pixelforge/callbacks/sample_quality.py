"""Validation-time sample quality: every N epochs, generate with the EMA weights and log FID/KID/accuracy."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from pixelforge.metrics.features import build_feature_extractor
from pixelforge.metrics.generation import evaluate_samples
from pixelforge.runs import load_run


class SampleQuality(L.Callback):
    """Logs ``val/fid``, ``val/kid`` and, for conditional models, ``val/cond_acc`` so curves show quality.

    ``classifier`` is the run directory (or checkpoint) of a classifier this codebase trained on the same data;
    its penultimate features make FID work offline. ``clip`` (a CLIP run) adds ``val/clip_score`` of text-to-image
    samples against their prompts and ``val/clip_fid``. ``sample_kwargs`` go to ``model.sample`` (sampler, steps,
    scale ...). Runs on rank 0 only.
    """

    def __init__(self, classifier: str | None = None, feature_kind: str = "classifier", every_n_epochs: int = 5,
                 n_samples: int = 1000, batch_size: int = 250, split: str = "val",
                 cache_dir: str | None = None, sample_kwargs: dict[str, Any] | None = None,
                 clip: str | None = None) -> None:
        super().__init__()
        if feature_kind == "classifier" and classifier is None:
            raise ValueError("SampleQuality needs classifier=<run dir or ckpt of a classifier on the same data>, "
                             "or callbacks.sample_quality=null to switch it off")
        self.classifier = classifier
        self.feature_kind = feature_kind
        self.every_n_epochs = every_n_epochs
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.split = split
        self.cache_dir = cache_dir
        self.sample_kwargs = dict(sample_kwargs or {})
        self.clip_run = clip
        self.extractor = None
        self.clip = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due = (trainer.current_epoch + 1) % self.every_n_epochs == 0 or trainer.current_epoch + 1 == trainer.max_epochs
        if trainer.sanity_checking or not due or not trainer.is_global_zero:
            return
        if self.extractor is None:
            self.extractor = build_feature_extractor(self.feature_kind, self.classifier)
        if self.clip_run is not None and self.clip is None:
            self.clip = load_run(self.clip_run)[1].requires_grad_(False)
        dataset = trainer.datamodule.build(self.split)
        key = f"{trainer.datamodule.dataset!r}|{self.split}"
        results = evaluate_samples(pl_module, self.extractor.to(pl_module.device), dataset, key, self.n_samples,
                                   self.batch_size, self.cache_dir,
                                   clip=None if self.clip is None else self.clip.to(pl_module.device),
                                   **self.sample_kwargs)
        rank_zero_info(f"epoch {trainer.current_epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        for name, value in results.items():
            pl_module.log(f"{self.split}/{name}", value, rank_zero_only=True)
