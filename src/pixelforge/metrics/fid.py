"""Fréchet and kernel distances between feature sets, with cached real-data statistics."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from torch import nn


def feature_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of ``N,F`` features."""
    x = features.double().cpu().numpy()
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), the FID formula (Heusel et al. 2017)."""
    covmean, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.isfinite(covmean).all():  # singular product: regularise as pytorch-fid does
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two ``N,F`` feature sets."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 20, subset_size: int = 500,
        seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance (Bińkowski et al. 2018): unbiased MMD² with a cubic polynomial kernel,
    mean and std over random subsets. Subsets hold at most half of the smaller set: subsets of the whole set
    would all be the same set, and their std would be zero whatever the sample size."""
    real, fake = real.double().cpu(), fake.double().cpu()
    size = min(subset_size, len(real) // 2, len(fake) // 2)
    if size < 2:
        raise ValueError(f"KID needs at least 4 real and 4 generated features, got {len(real)} and {len(fake)}")
    dim = real.shape[1]
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=generator)[:size]]
        y = fake[torch.randperm(len(fake), generator=generator)[:size]]
        kxx, kyy, kxy = ((a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off = 1 - torch.eye(size, dtype=torch.float64)
        mmd = ((kxx * off).sum() + (kyy * off).sum()) / (size * (size - 1)) - 2 * kxy.mean()
        values.append(float(mmd))
    return float(np.mean(values)), float(np.std(values))


@torch.no_grad()
def extract(extractor: nn.Module, images: Iterable[torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
    """Features of every image batch (``B,C,H,W`` in [-1, 1]), concatenated on the CPU."""
    extractor = extractor.to(device)
    return torch.cat([extractor(batch.to(device)).cpu() for batch in images])


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pixelforge`` (``~/.cache/pixelforge`` by default): where real-image features are kept."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "pixelforge"


def cached_real_features(extractor: nn.Module, key: str, images: Iterable[torch.Tensor], cache_dir: str | Path,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """Real-image features, computed once per (dataset, split, extractor) ``key`` and cached on disk."""
    digest = hashlib.sha1(f"{key}|{extractor.name}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"features-{digest}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    features = extract(extractor, images, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(features, tmp)
    tmp.replace(path)
    return features
