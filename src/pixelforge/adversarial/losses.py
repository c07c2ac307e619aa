"""GAN losses over raw discriminator outputs (logits / critic values, shape ``B``) and gradient penalties."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LOSSES = ("bce", "hinge", "wasserstein")


def check_loss(kind: str) -> None:
    """Raise for an unknown loss name, listing the valid ones."""
    if kind not in LOSSES:
        raise ValueError(f"unknown GAN loss {kind!r}; choose one of {LOSSES}")


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    """D's loss: BCE on logits (real=1, fake=0), hinge (Lim & Ye; Miyato et al.) or the Wasserstein critic gap."""
    check_loss(kind)
    if kind == "bce":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return fake.mean() - real.mean()


def generator_loss(fake: torch.Tensor, kind: str) -> torch.Tensor:
    """G's loss: non-saturating -log D(G(z)) for BCE (strong gradients early on), else -D(G(z))."""
    check_loss(kind)
    if kind == "bce":
        return F.softplus(-fake).mean()
    return -fake.mean()


def input_gradients(outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients of ``outputs`` w.r.t. ``inputs`` flattened to ``B,D``, kept in the graph for backward."""
    (grad,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=True)
    return grad.flatten(1)


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     weight: float = 10.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al.): ``weight * E[(||grad critic(x_hat)|| - 1)^2]`` at random real/fake interpolates."""
    alpha = torch.rand(len(real), *([1] * (real.dim() - 1)), generator=generator, device=real.device,
                       dtype=real.dtype)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    norms = input_gradients(critic(mixed), mixed).norm(dim=1)
    return weight * (norms - 1).pow(2).mean()


def r1_penalty(real_outputs: torch.Tensor, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """R1 (Mescheder et al.): ``gamma / 2 * E||grad D(x)||^2`` on real data; ``real`` must require grad."""
    return gamma / 2 * input_gradients(real_outputs, real).pow(2).sum(1).mean()
