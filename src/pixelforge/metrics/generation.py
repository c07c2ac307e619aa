"""Sample-quality evaluation of a generative model: FID/KID on classifier features and conditional accuracy."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pixelforge.metrics.fid import cached_real_features, default_cache_dir, extract, fid, kid


def real_batches(dataset: Dataset, batch_size: int = 500) -> Iterable[torch.Tensor]:
    """The images of ``dataset`` in order, batch by batch."""
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        yield batch["image"]


def dataset_labels(dataset: Dataset, keys: list[str], n: int, seed: int = 0) -> torch.Tensor | None:
    """``n`` label rows drawn (with a fixed seed) from the dataset's own labels, so conditional samples follow the
    real class distribution; ``B`` for one key, ``B,K`` for several, None for no keys."""
    if not keys:
        return None
    index = torch.randint(len(dataset), (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    rows = [[int(dataset[i][key]) for key in keys] for i in index]
    labels = torch.tensor(rows)
    return labels[:, 0] if len(keys) == 1 else labels


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
    **sample_kwargs,
) -> dict[str, float]:
    """Generate ``n_samples`` with ``model.sample`` and compare them to ``dataset`` on ``extractor`` features.

    Real features are cached in ``cache_dir`` (default: ``default_cache_dir()``). Returns ``fid``, ``kid`` (and
    its std), and for conditional models ``cond_acc`` (share of samples the extractor's classifier labels as
    requested; with several keys, all of them right) plus one per key.
    """
    device = next(model.parameters()).device
    keys = list(getattr(model, "cond_keys", []))
    labels = dataset_labels(dataset, keys, n_samples, seed)
    generator = torch.Generator(device).manual_seed(seed)
    fakes = []
    for start in range(0, n_samples, batch_size):
        count = min(batch_size, n_samples - start)
        chunk = labels[start:start + count].to(device) if labels is not None else None
        fakes.append(model.sample(count, labels=chunk, generator=generator, **sample_kwargs).cpu())
    fake = torch.cat(fakes)
    real_features = cached_real_features(extractor, dataset_key, real_batches(dataset),
                                         Path(cache_dir).expanduser() if cache_dir else default_cache_dir(),
                                         device)
    fake_features = extract(extractor, fake.split(batch_size), device)
    kid_mean, kid_std = kid(real_features, fake_features, subset_size=kid_subset_size)
    results = {"fid": fid(real_features, fake_features), "kid": kid_mean, "kid_std": kid_std}
    if labels is not None and hasattr(extractor, "predict"):
        results.update(conditional_accuracy(extractor, fake, labels, keys, batch_size, device))
    return results


@torch.no_grad()
def conditional_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, keys: list[str],
                         batch_size: int = 250, device: torch.device | str = "cpu") -> dict[str, float]:
    """Share of ``images`` that ``classifier.predict`` labels as requested, per key and for all keys at once."""
    predictions: dict[str, list[torch.Tensor]] = {}
    for chunk in images.split(batch_size):
        for key, value in classifier.predict(chunk.to(device)).items():
            predictions.setdefault(key, []).append(value.cpu())
    wanted = labels.view(len(labels), -1)
    correct = []
    results: dict[str, float] = {}
    for i, key in enumerate(keys):
        if key not in predictions:
            raise ValueError(f"the classifier predicts {sorted(predictions)}, not the model's condition {key!r}")
        hits = torch.cat(predictions[key]) == wanted[:, i]
        correct.append(hits)
        if len(keys) > 1:
            results[f"cond_acc/{key}"] = hits.float().mean().item()
    results["cond_acc"] = torch.stack(correct).all(0).float().mean().item()
    return results

