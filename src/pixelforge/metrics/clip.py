"""What a CLIP run knows, measured on a split: zero-shot accuracy per target from its prompts (with confusion
matrices) and image <-> text retrieval recall of the split's captions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset

from pixelforge.contrastive.zero_shot import confusion, retrieval_recall
from pixelforge.protocols import AlignsText

if TYPE_CHECKING:
    from pixelforge.models.clip import CLIP


@torch.no_grad()
def evaluate_clip(model: CLIP, dataset: Dataset, batch_size: int = 250,
                  device: str | torch.device = "cpu") -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """(``{zero_shot/<target>: accuracy, zero_shot_joint/<target>: accuracy, <direction>_R@k: recall}``,
    ``{target: confusion matrix}``)."""
    keys = model.judged
    images, texts, captions, labels = [], [], [], {key: [] for key in keys}
    for batch in DataLoader(dataset, batch_size=batch_size):
        images.append(model.encode_image(batch["image"].to(device)))
        texts.append(model.encode_text(list(batch[model.caption_key])))
        captions += list(batch[model.caption_key])
        for key in keys:
            labels[key].append(batch[key].to(device))
    images, texts = torch.cat(images), torch.cat(texts)
    results, matrices = {}, {}
    for name, predicted in model.zero_shot_predictions(images).items():
        kind, key = name.split("/")
        truth = torch.cat(labels[key])
        results[name] = float((predicted == truth).float().mean())
        if kind == "zero_shot":
            matrices[key] = confusion(predicted, truth, len(model.zero_shot[key]["classes"])).cpu()
    results.update(retrieval_recall(images, texts, captions))
    return results, matrices


@torch.no_grad()
def clip_score(model: AlignsText, images: torch.Tensor, prompts: list[str], batch_size: int = 250,
               device: str | torch.device = "cpu") -> float:
    """CLIP score (Hessel et al. 2021): 100 x max(cos(image, its prompt), 0), averaged over the pairs; how well
    images match their prompts by a CLIP's judgement, where no attribute classifier exists."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts: CLIP score needs one prompt an image")
    scores = []
    for start in range(0, len(images), batch_size):
        image = model.encode_image(images[start:start + batch_size].to(device))
        text = model.encode_text(prompts[start:start + batch_size])
        scores.append((image * text).sum(1).clamp(min=0))
    return float(100 * torch.cat(scores).mean())


@torch.no_grad()
def clip_features(model: AlignsText, images: torch.Tensor, batch_size: int = 250,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """The CLIP image embeddings of ``images`` (the features of FID on CLIP)."""
    return torch.cat([model.encode_image(chunk.to(device)).cpu() for chunk in images.split(batch_size)])
