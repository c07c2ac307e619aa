"""Likelihood of a VAE on a dataset: ELBO terms and the importance-sampled log-likelihood, in nats and bits/dim."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


def bits_per_dim(nats_per_image: float, dims: int) -> float:
    """Convert a negative log-likelihood in nats per image into bits per dimension."""
    return nats_per_image / (dims * math.log(2))


@torch.no_grad()
def evaluate_likelihood(model: nn.Module, dataset: Dataset, k: int = 256, batch_size: int = 250,
                        device: torch.device | str = "cpu", seed: int = 0) -> dict[str, float]:
    """Mean ``elbo``, ``reconstruction``, ``kl`` and ``nll_is`` (−log p(x) from ``k`` importance samples) in
    nats per image, and ``bpd`` (``nll_is`` in bits per dimension), of ``model`` over ``dataset``."""
    torch.manual_seed(seed)
    sums = {"elbo": 0.0, "reconstruction": 0.0, "kl": 0.0, "nll_is": 0.0}
    dims = 0
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size, shuffle=False), desc="likelihood", leave=False):
        x = batch["image"].to(device)
        dims = x[0].numel()
        for name, values in model.elbo_terms(x).items():
            if name in sums:
                sums[name] += values.sum().item()
        sums["nll_is"] -= model.log_likelihood(x, k).sum().item()
    means = {name: total / len(dataset) for name, total in sums.items()}
    means["bpd"] = bits_per_dim(means["nll_is"], dims)
    return means
