"""Sample-quality evaluation of a generative model: FID/KID on classifier features and conditional accuracy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pixelforge.data.shapes import VALUES, ShapesDataset
from pixelforge.metrics.clip import clip_features, clip_score
from pixelforge.metrics.fid import cached_real_features, default_cache_dir, extract, fid, kid
from pixelforge.metrics.shape_fidelity import FIT_KEYS, captioned_fit, summary
from pixelforge.protocols import AlignsText
from pixelforge.utils.images import caption_images, grid, save_png


def real_batches(dataset: Dataset, batch_size: int = 500) -> Iterable[torch.Tensor]:
    """The images of ``dataset`` in order, batch by batch."""
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        yield batch["image"]


def item_labels(dataset: Dataset, i: int) -> Mapping[str, Any]:
    """Item ``i`` for its labels and caption: a shapes item's without rendering its image (``evaluate.py`` asks
    for thousands), any other dataset's item as it comes."""
    if isinstance(dataset, ShapesDataset):
        return {**dataset.attributes(i), "caption": dataset.caption(i)}
    return dataset[i]


def dataset_conditions(dataset: Dataset, n: int, label_keys: list[str], prompt_key: str | None = None,
                       seed: int = 0) -> tuple[torch.Tensor | None, list[str] | None]:
    """Labels (``B`` for one key, ``B,K`` for several, None for none) and prompts of ``n`` items of ``dataset``, so
    conditional samples follow the real distribution of classes and captions. The items are a seeded permutation,
    repeated as often as ``n`` needs: with ``n = len(dataset)`` every seed asks for the same captions, once each,
    and seeds differ only in their noise (drawn with replacement, four seeds asked for 58 to 80 small triangles
    among 500 held-out shapes captions, which moved the strict fit by up to 2 points)."""
    generator = torch.Generator().manual_seed(seed)
    rounds = -(-n // len(dataset))
    index = torch.cat([torch.randperm(len(dataset), generator=generator) for _ in range(rounds)])[:n].tolist()
    items = [item_labels(dataset, i) for i in index] if label_keys or prompt_key else []
    prompts = [item[prompt_key] for item in items] if prompt_key else None
    if not label_keys:
        return None, prompts
    labels = torch.tensor([[int(item[key]) for key in label_keys] for item in items])
    return (labels[:, 0] if len(label_keys) == 1 else labels), prompts


def judged_keys(model: nn.Module, extractor: nn.Module, dataset: Dataset) -> tuple[list[str], str | None]:
    """(label keys the samples are judged on, prompt key or None): a text-conditioned model is judged on every
    attribute its captions state that the extractor's classifier predicts; a class-conditional one on its labels."""
    text_key = getattr(getattr(model, "conditioner", None), "text_key", None)
    if text_key is None:
        return list(getattr(model, "cond_keys", [])), None
    targets = getattr(getattr(extractor, "classifier", None), "targets", {})
    item = dataset[0]
    return [key for key in targets if key in item], text_key


@torch.no_grad()
def generate(model: nn.Module, n_samples: int, labels: torch.Tensor | None, prompts: list[str] | None,
             prompt_key: str | None, batch_size: int = 250, seed: int = 0, **sample_kwargs) -> torch.Tensor:
    """``n_samples`` images from ``model.sample`` in batches, prompted with ``prompts`` under ``prompt_key`` if
    given, else class-conditioned on ``labels`` (or unconditional), from one generator seeded with ``seed``."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    fakes = []
    for start in range(0, n_samples, batch_size):
        count = min(batch_size, n_samples - start)
        if prompts is not None:
            condition = {"conditions": {prompt_key: prompts[start:start + count]}}
        else:
            condition = {"labels": labels[start:start + count].to(device) if labels is not None else None}
        fakes.append(model.sample(count, generator=generator, **condition, **sample_kwargs).cpu())
    return torch.cat(fakes)


def fit_labels(dataset: ShapesDataset, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The shape, size and position labels of the ``n`` items ``dataset_conditions`` draws with ``seed``: what
    ``shape_fidelity`` judges their samples against."""
    attributes, _ = dataset_conditions(dataset, n, list(FIT_KEYS), seed=seed)
    return dict(zip(FIT_KEYS, attributes.T, strict=True))


@torch.no_grad()
def evaluate_samples(
    model: nn.Module,
    extractor: nn.Module,
    dataset: Dataset,
    dataset_key: str,
    n_samples: int = 1000,
    batch_size: int = 250,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    kid_subset_size: int = 500,
    clip: AlignsText | None = None,
    worst_path: str | Path | None = None,
    misread_path: str | Path | None = None,
    **sample_kwargs,
) -> dict[str, float]:
    """Generate ``n_samples`` with ``model.sample`` and compare them to ``dataset`` on ``extractor`` features.

    Real features are cached in ``cache_dir`` (default: ``default_cache_dir()``). Returns ``fid``, ``kid`` (and
    its std), and for conditional models ``cond_acc`` (share of samples the extractor's classifier labels as
    requested; with several keys, all of them right) plus one per key. Text-conditioned models are prompted with
    the captions of drawn items and judged on those items' labels (e.g. the shapes attributes); with a ``clip`` run
    also by its CLIP score against their prompts, and ``clip_fid``, FID on its image embeddings. Samples of a
    text-conditioned model of the shapes set also get ``shape_fit`` (see ``metrics.shape_fidelity``), and
    ``worst_path`` a PNG grid of the worst-fitting ones with their IoU and prompt. ``misread_path``: a PNG grid of
    the samples the classifier labels otherwise than asked, with what it read (written only where it misread one).
    """
    device = next(model.parameters()).device
    keys, prompt_key = judged_keys(model, extractor, dataset)
    labels, prompts = dataset_conditions(dataset, n_samples, keys, prompt_key, seed)
    fake = generate(model, n_samples, labels, prompts, prompt_key, batch_size, seed, **sample_kwargs)
    real_features = cached_real_features(extractor, dataset_key, real_batches(dataset),
                                         Path(cache_dir).expanduser() if cache_dir else default_cache_dir(),
                                         device)
    fake_features = extract(extractor, fake.split(batch_size), device)
    kid_mean, kid_std = kid(real_features, fake_features, subset_size=kid_subset_size)
    results = {"fid": fid(real_features, fake_features), "kid": kid_mean, "kid_std": kid_std}
    iou = None
    if prompts is not None and isinstance(dataset, ShapesDataset):
        targets = fit_labels(dataset, n_samples, seed)
        fits, iou, dented = captioned_fit(fake, targets)
        results.update(summary(fits, iou, dented, targets["shape"]))
        if worst_path is not None:
            save_worst(fake, fits, iou, dented, prompts, worst_path)
    if labels is not None and hasattr(extractor, "predict"):
        predicted = predict_labels(extractor, fake, keys, batch_size, device)
        results.update(accuracy(predicted, labels, keys))
        if misread_path is not None and prompts is not None:
            names = VALUES if isinstance(dataset, ShapesDataset) else None
            save_misreads(fake, predicted, labels, keys, prompts, misread_path, names, iou)
    if clip is not None:
        if prompts is not None:
            results["clip_score"] = clip_score(clip, fake, prompts, batch_size, device)
        real = torch.cat(list(real_batches(dataset)))
        results["clip_fid"] = fid(clip_features(clip, real, batch_size, device), clip_features(clip, fake, batch_size,
                                                                                            device))
    return results


def save_worst(images: torch.Tensor, fits: torch.Tensor, iou: torch.Tensor, dented: torch.Tensor,
               prompts: list[str], path: str | Path, n: int = 32) -> None:
    """PNG grid of the ``n`` worst samples: those that do not fit first, then the rest, each by IoU; captioned with
    the IoU, "dent" where a dent failed it, and the prompt (red: does not fit)."""
    order = sorted(range(len(iou)), key=lambda i: (bool(fits[i]), float(iou[i])))[:n]
    texts = [f"{iou[i]:.2f}{' dent' if dented[i] else ''} {prompts[i]}" for i in order]
    colors = [(255, 255, 255) if fits[i] else (255, 80, 80) for i in order]
    save_png(grid(caption_images(images[order], texts, colors), nrow=4), path)


@torch.no_grad()
def predict_labels(classifier: nn.Module, images: torch.Tensor, keys: list[str], batch_size: int = 250,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """``B,K``: the label ``classifier.predict`` gives each of ``images`` for each of ``keys``."""
    predictions: dict[str, list[torch.Tensor]] = {}
    for chunk in images.split(batch_size):
        for key, value in classifier.predict(chunk.to(device)).items():
            predictions.setdefault(key, []).append(value.cpu())
    for key in keys:
        if key not in predictions:
            raise ValueError(f"the classifier predicts {sorted(predictions)}, not the model's condition {key!r}")
    return torch.stack([torch.cat(predictions[key]) for key in keys], 1)


def accuracy(predicted: torch.Tensor, labels: torch.Tensor, keys: list[str]) -> dict[str, float]:
    """Share of ``B,K`` ``predicted`` labels equal to ``labels`` (``B`` or ``B,K``), per key and on all keys."""
    hits = predicted == labels.view(len(labels), -1)
    results = {}
    if len(keys) > 1:
        results = {f"cond_acc/{key}": hits[:, i].float().mean().item() for i, key in enumerate(keys)}
    results["cond_acc"] = hits.all(1).float().mean().item()
    return results


def conditional_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, keys: list[str],
                         batch_size: int = 250, device: torch.device | str = "cpu") -> dict[str, float]:
    """Share of ``images`` that ``classifier.predict`` labels as requested, per key and for all keys at once."""
    return accuracy(predict_labels(classifier, images, keys, batch_size, device), labels, keys)


def save_misreads(images: torch.Tensor, predicted: torch.Tensor, labels: torch.Tensor, keys: list[str],
                  prompts: list[str], path: str | Path, names: Mapping[str, Sequence[str]] | None = None,
                  iou: torch.Tensor | None = None, n: int = 32) -> None:
    """PNG grid of the first ``n`` samples the classifier labels otherwise than asked, each captioned with what it
    read (``key: value``; class names from ``names``), its IoU with the captioned shape if given, and its prompt;
    nothing is written when it misread none."""
    wrong = (predicted != labels.view(len(labels), -1)).nonzero().tolist()
    read: dict[int, list[str]] = {}
    for i, k in wrong:
        value = int(predicted[i, k])
        read.setdefault(i, []).append(f"{keys[k]}: {names[keys[k]][value] if names else value}")
    if read:
        shown = sorted(read)[:n]
        texts = [(f"{iou[i]:.2f} " if iou is not None else "") + f"{', '.join(read[i])} | {prompts[i]}" for i in shown]
        save_png(grid(caption_images(images[shown], texts, [(255, 80, 80)] * len(shown)), nrow=4), path)

