"""What an image-text model knows without training on labels: zero-shot classification from prompts (CLIP's
prompt ensembling over templates) and image <-> text retrieval recall."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

DEFAULT_TEMPLATES = ("a photo of a {}", "a {}")


def prompts(classes: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[list[str]]:
    """Each class name in every template, e.g. ``[["a photo of a cat", "a cat"], ...]``."""
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"a zero-shot template takes the class name once as {{}}, got {template!r}")
    return [[template.format(name) for template in templates] for name in classes]


@torch.no_grad()
def class_weights(encode_text: Callable[[list[str]], torch.Tensor], classes: Sequence[str],
                  templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """``C,E`` unit class embeddings: the mean of each class's normalised prompt embeddings, normalised."""
    texts = prompts(classes, templates)
    flat = F.normalize(encode_text([t for group in texts for t in group]).float(), dim=1)
    return F.normalize(flat.view(len(classes), len(templates), -1).mean(1), dim=1)


def zero_shot_predict(image_features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The class whose embedding is the most similar to each image's."""
    return (F.normalize(image_features.float(), dim=1) @ weights.T).argmax(1)


def confusion(predicted: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``C,C`` counts, rows the true class, columns the predicted one."""
    return torch.bincount(labels * classes + predicted, minlength=classes * classes).view(classes, classes)


@torch.no_grad()
def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, captions: Sequence[str],
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Image -> text and text -> image recall at each k over paired features: a query hits when one of its k most
    similar candidates carries its own caption (identical captions are the same text, so any copy counts)."""
    image, text = F.normalize(image_features.float(), dim=1), F.normalize(text_features.float(), dim=1)
    ids = {caption: i for i, caption in enumerate(dict.fromkeys(captions))}
    caption_ids = torch.tensor([ids[c] for c in captions], device=image.device)
    similarity = image @ text.T
    out = {}
    for direction, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        for k in ks:
            top = scores.topk(min(k, scores.shape[1]), dim=1).indices
            hits = (caption_ids[top] == caption_ids[:, None]).any(1)
            out[f"{direction}_R@{k}"] = float(hits.float().mean())
    return out


def check_zero_shot(zero_shot: Mapping[str, Mapping] | None, targets: Mapping[str, int]) -> dict[str, dict]:
    """``{target: {classes, templates}}`` checked against the data's targets (one name per class)."""
    checked = {}
    for key, spec in (zero_shot or {}).items():
        if key not in targets:
            raise ValueError(f"zero-shot target {key!r} is not one of the data's targets {sorted(targets)}")
        classes = list(spec["classes"])
        if len(classes) != targets[key]:
            raise ValueError(f"zero-shot target {key!r} names {len(classes)} classes, the data has {targets[key]}")
        checked[key] = {"classes": classes, "templates": list(spec.get("templates", DEFAULT_TEMPLATES))}
    return checked


def check_joint(joint: Mapping[str, Any] | None, targets: Mapping[str, int]) -> dict[str, Any] | None:
    """``{prompts: [P texts], labels: {target: [P class indices]}}``, one prompt for each combination of the targets'
    classes, checked against the data's targets."""
    if not joint:
        return None
    prompts, labels = list(joint["prompts"]), {key: list(values) for key, values in joint["labels"].items()}
    for key, values in labels.items():
        if key not in targets:
            raise ValueError(f"joint zero-shot target {key!r} is not one of the data's targets {sorted(targets)}")
        if len(values) != len(prompts) or not all(0 <= v < targets[key] for v in values):
            raise ValueError(f"joint zero-shot labels of {key!r} must give one class in [0, {targets[key]}) for each "
                             f"of the {len(prompts)} prompts")
    return {"prompts": prompts, "labels": labels}


def joint_predict(image_features: torch.Tensor, prompt_features: torch.Tensor,
                  labels: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each target's class as the most similar whole prompt states it (zero-shot over the joint label space)."""
    best = (F.normalize(image_features.float(), dim=1) @ F.normalize(prompt_features.float(), dim=1).T).argmax(1)
    return {key: values.to(best.device)[best] for key, values in labels.items()}
