"""CLIP: an image tower and a text tower trained to agree on captioned images (Radford et al. 2021)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from pixelforge.contrastive.losses import clip_loss
from pixelforge.contrastive.zero_shot import (
    check_joint,
    check_zero_shot,
    class_weights,
    joint_predict,
    retrieval_recall,
    zero_shot_predict,
)
from pixelforge.modules.augment import ViewAugment
from pixelforge.modules.encoders.clip_text import CausalTextTransformer, check_layer
from pixelforge.optim import configure_optimizer
from pixelforge.utils.plots import figure_tensor, similarity_figure


class CLIP(L.LightningModule):
    """``image_encoder`` (a backbone from ``modules/``) and ``text_encoder`` (a causal transformer, features at the
    end-of-text token) with linear projections to ``embed_dim``, trained by the symmetric InfoNCE over the global
    batch with a learnable ``logit_scale`` (initialised at ln(1/0.07), clamped at ``max_logit_scale`` = ln 100).

    ``augment`` (optional) draws one random view of each training image. Validation and test log the loss, image <->
    text retrieval recall and, for each target of ``zero_shot`` (``{target: {classes: [names], templates:
    ["a photo of a {}"]}}``), the zero-shot accuracy from prompts alone; ``zero_shot_joint`` (``{prompts, labels:
    {target: class per prompt}}``, a prompt per combination of classes) reads every target off the best prompt."""

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: CausalTextTransformer,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        embed_dim: int = 128,
        logit_scale: float = math.log(1 / 0.07),
        max_logit_scale: float = math.log(100),
        augment: ViewAugment | None = None,
        caption_key: str = "caption",
        targets: Mapping[str, int] | None = None,
        zero_shot: Mapping[str, Mapping[str, Any]] | None = None,
        zero_shot_joint: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["image_encoder", "text_encoder", "optimizer", "scheduler", "augment"])
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_projection = nn.Linear(image_encoder.out_features, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_encoder.dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.max_logit_scale = max_logit_scale
        self.augment = augment
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.caption_key = caption_key
        self.zero_shot = check_zero_shot(zero_shot, dict(targets or {}))
        self.zero_shot_joint = check_joint(zero_shot_joint, dict(targets or {}))
        self.outputs: list[dict[str, Any]] = []

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The image tower's features ``B,F`` (before the projection), for linear probes."""
        return self.image_encoder(images)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings ``B,embed_dim`` of ``B,C,H,W`` images in [-1, 1]."""
        return F.normalize(self.image_projection(self.image_encoder(images)), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit text embeddings ``B,embed_dim`` of prompts."""
        return F.normalize(self.text_projection(self.text_encoder.pooled(texts)), dim=-1)

    def loss(self, batch: dict, augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(InfoNCE of the batch's images, one random view each with ``augment``, and captions; the share of images
        whose best caption is their own)."""
        images = batch["image"]
        if augment and self.augment is not None:
            images = self.augment(images)
        return clip_loss(self.encode_image(images), self.encode_text(batch[self.caption_key]), self.logit_scale)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, accuracy = self.loss(batch, augment=True)
        self.log_dict({"train/loss": loss, "train/acc": accuracy, "train/logit_scale": self.logit_scale.exp()},
                      prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Keep the temperature in CLIP's range: ``exp(logit_scale)`` at most 100."""
        with torch.no_grad():
            self.logit_scale.clamp_(0, self.max_logit_scale)

    def evaluation_step(self, batch: dict, split: str) -> None:
        images, captions = self.encode_image(batch["image"]), self.encode_text(batch[self.caption_key])
        loss, accuracy = clip_loss(images, captions, self.logit_scale)
        self.log_dict({f"{split}/loss": loss, f"{split}/acc": accuracy}, prog_bar=True, sync_dist=True,
                      batch_size=len(batch["image"]))
        self.outputs.append({"image": images, "text": captions, "caption": list(batch[self.caption_key]),
                             **{key: batch[key] for key in self.judged}})

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.log_evaluation("test")

    @property
    def judged(self) -> list[str]:
        """The batch keys whose zero-shot accuracy is measured (``zero_shot``'s and ``zero_shot_joint``'s)."""
        joint = self.zero_shot_joint["labels"] if self.zero_shot_joint else {}
        return list(dict.fromkeys([*self.zero_shot, *joint]))

    def zero_shot_weights(self) -> dict[str, torch.Tensor]:
        """``{target: C,E class embeddings}`` from the prompts of ``zero_shot``."""
        return {key: class_weights(self.encode_text, spec["classes"], spec["templates"])
                for key, spec in self.zero_shot.items()}

    @torch.no_grad()
    def zero_shot_predictions(self, image_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted classes of image embeddings: ``zero_shot/<target>`` from the averaged prompts of each class,
        ``zero_shot_joint/<target>`` from the best whole prompt."""
        out = {f"zero_shot/{key}": zero_shot_predict(image_features, weights)
               for key, weights in self.zero_shot_weights().items()}
        if self.zero_shot_joint is not None:
            out.update({f"zero_shot_joint/{key}": value for key, value in self.joint_predict(image_features).items()})
        return out

    def log_evaluation(self, split: str) -> None:
        """Retrieval recall and zero-shot accuracy over everything this split's batches gave."""
        outputs, self.outputs = self.outputs, []
        if not outputs:
            return
        images = torch.cat([o["image"] for o in outputs])
        texts = torch.cat([o["text"] for o in outputs])
        captions = [c for o in outputs for c in o["caption"]]
        log = {f"{split}/{name}": value for name, value in retrieval_recall(images, texts, captions).items()
               if name.endswith(("R@1", "R@5"))}
        labels = {key: torch.cat([o[key] for o in outputs]) for key in self.judged}
        accuracies = {name: (predicted == labels[name.split("/")[1]]).float().mean()
                      for name, predicted in self.zero_shot_predictions(images).items()}
        log.update({f"{split}/{name}": value for name, value in accuracies.items()})
        for kind in ("zero_shot", "zero_shot_joint"):
            values = [value for name, value in accuracies.items() if name.startswith(f"{kind}/")]
            if values:
                log[f"{split}/{kind}_acc"] = torch.stack(values).mean()
        self.log_dict(log, prog_bar=True, sync_dist=True)

    @torch.no_grad()
    def joint_predict(self, image_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every target of ``zero_shot_joint`` as the prompt most similar to each image states it."""
        prompts = self.zero_shot_joint["prompts"]
        texts = torch.cat([self.encode_text(prompts[i:i + 500]) for i in range(0, len(prompts), 500)])
        labels = {key: torch.tensor(values) for key, values in self.zero_shot_joint["labels"].items()}
        return joint_predict(image_features, texts, labels)

    def configure_optimizers(self) -> dict:
        return configure_optimizer(self.parameters(), self.optimizer, self.scheduler,
                                   self.trainer.estimated_stepping_batches)

    @torch.no_grad()
    def log_images(self, batch: dict, max_images: int = 16, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The batch's image-text cosine similarity matrix beside its images, as a picture."""
        images, captions = batch["image"][:max_images], list(batch[self.caption_key][:max_images])
        similarity = self.encode_image(images) @ self.encode_text(captions).T
        return {"similarity": figure_tensor(similarity_figure(similarity.cpu(), images.cpu(), captions))[None]}


def frozen_text_tower(run: str | None = None, layer: str = "last",
                      experiment: str | None = None) -> CausalTextTransformer:
    """The text tower of the CLIP run at ``run``, frozen, as a conditioner's text encoder: the token states of its
    ``layer`` (``last``, as SD 1.x takes CLIP's, or ``penultimate``, as SD 2.x takes OpenCLIP's). ``experiment``
    alone is turned into a run by ``main.py -t`` before the model is built (:func:`pixelforge.stages.plan`)."""
    if not run:
        hint = f"; experiment {experiment!r} is turned into a run by main.py -t" if experiment else ""
        raise ValueError(f"the CLIP text encoder needs a CLIP run directory (run=logs/<clip run>) or a CLIP "
                         f"experiment that main.py -t trains first (experiment=clip_shapes){hint}")
    from pixelforge.runs import load_run

    _, model = load_run(run)
    if not isinstance(model, CLIP):
        raise ValueError(f"{run} is a {type(model).__name__} run, not a CLIP run (experiment=clip_shapes, ...)")
    return text_tower(model, layer)


def text_tower(clip: CLIP, layer: str = "last") -> CausalTextTransformer:
    """``clip``'s text tower, frozen, giving the token states of its ``layer`` (``last`` or ``penultimate``)."""
    tower = clip.text_encoder
    tower.layer = check_layer(layer, len(tower.blocks))
    return tower.eval().requires_grad_(False)
