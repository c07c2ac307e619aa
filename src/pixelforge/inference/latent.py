"""Latent-space helpers for autoencoders and VAEs: encode a dataset, project to 2-D, interpolate, attribute vectors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def encode_dataset(model: nn.Module, dataset: Dataset, keys: Sequence[str], batch_size: int = 250,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``model.encode`` of every image of ``dataset`` in order (``N,...`` on the CPU) and its labels per key."""
    latents, labels = [], {key: [] for key in keys}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        latents.append(model.encode(batch["image"].to(device)).float().cpu())
        for key in keys:
            labels[key].append(torch.as_tensor(batch[key]))
    return torch.cat(latents), {key: torch.cat(values) for key, values in labels.items()}


def project_2d(z: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """``N,D`` latents as ``N,2`` points: themselves when D = 2, else their first two principal components.

    Also returns the share of the variance each plotted axis explains.
    """
    z = z.flatten(1).double()
    centred = z - z.mean(0)
    if z.shape[1] <= 2:
        variance = centred.var(0)
        return z.float(), (variance / variance.sum()).tolist()
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    explained = singular.pow(2) / singular.pow(2).sum()
    return (centred @ vh[:2].T).float(), explained[:2].tolist()


def fit_gaussian(z: torch.Tensor) -> torch.distributions.MultivariateNormal:
    """A full-covariance Gaussian fitted to ``N,...`` latents: the stand-in prior of a plain autoencoder."""
    flat = z.flatten(1).double()
    covariance = torch.cov(flat.T) + 1e-5 * torch.eye(flat.shape[1], dtype=flat.dtype)
    return torch.distributions.MultivariateNormal(flat.mean(0), covariance_matrix=covariance)


def interpolate(za: torch.Tensor, zb: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` latents on the straight line from ``za`` to ``zb`` (both ends included)."""
    weights = torch.linspace(0, 1, steps, dtype=za.dtype, device=za.device).view(-1, *([1] * za.dim()))
    return (1 - weights) * za + weights * zb


def attribute_vector(z: torch.Tensor, has_attribute: torch.Tensor) -> torch.Tensor:
    """Mean latent of the images with an attribute minus the mean of those without (White, 2016)."""
    count = int(has_attribute.sum())
    if count == 0 or count == len(has_attribute):
        raise ValueError(f"an attribute vector needs images with and without the attribute; {count} of "
                         f"{len(has_attribute)} have it")
    return z[has_attribute].mean(0) - z[~has_attribute].mean(0)
