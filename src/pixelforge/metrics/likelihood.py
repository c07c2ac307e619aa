"""Likelihood of a VAE on a dataset: ELBO terms and the importance-sampled log-likelihood, in nats and bits/dim."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


@torch.no_grad()
def evaluate_likelihood(model: nn.Module, dataset: Dataset, k: int = 256, batch_size: int = 250,
                        device: torch.device | str = "cpu", seed: int = 0) -> dict[str, float]:
    """Mean ``elbo``, ``reconstruction``, ``kl`` and ``nll_is`` (−log p(x) from ``k`` importance samples) in
    nats per image, and ``bpd`` (``nll_is`` in bits per dimension, on the scale ``model.bits_per_dim`` defines),
    of ``model`` over ``dataset``."""
    generator = torch.Generator(device).manual_seed(seed)
    sums = {"elbo": 0.0, "reconstruction": 0.0, "kl": 0.0, "nll_is": 0.0}
    image_shape: tuple[int, ...] = ()
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size, shuffle=False), desc="likelihood", leave=False):
        x = batch["image"].to(device)
        image_shape = tuple(x.shape[1:])
        for name, values in model.elbo_terms(x, generator).items():
            if name in sums:
                sums[name] += values.sum().item()
        sums["nll_is"] -= model.log_likelihood(x, k, generator).sum().item()
    means = {name: total / len(dataset) for name, total in sums.items()}
    means["bpd"] = model.bits_per_dim(torch.tensor(means["nll_is"]), image_shape).item()
    return means
