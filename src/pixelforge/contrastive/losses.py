"""Contrastive losses over the global batch: SimCLR's NT-Xent and CLIP's symmetric InfoNCE.

Under DDP every rank gathers the embeddings of all ranks *with* their gradients and computes the loss of the whole
global batch; the gather's backward sums the ranks' gradients and DDP averages them, so each rank's update is the
gradient of one process on the concatenated batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient of the whole batch and keeps this rank's
    rows (a reduce-scatter written as an all-reduce, which every backend has)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = slice(dist.get_rank() * len(x), (dist.get_rank() + 1) * len(x))
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0, in rank order, differentiable; ``x`` itself on one process.
    Every rank must hold the same number of rows (DDP's samplers pad to that)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
            gather: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's normalised-temperature cross entropy (Chen et al. 2020) of two views' embeddings ``B,D``: each of
    the 2B embeddings must pick its other view among the 2B - 1 others by cosine similarity / ``temperature``.
    Returns (mean loss, the share of embeddings whose nearest other is their pair)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if gather:
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    logits = (z @ z.T / temperature).float()
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    loss = F.cross_entropy(logits, targets)
    return loss, (logits.argmax(1) == targets).float().mean()


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              gather: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's symmetric InfoNCE (Radford et al. 2021): image i must pick text i among the batch's texts and text i
    image i, over ``exp(logit_scale) x`` cosine similarities. Returns (mean of both directions' cross entropy,
    the share of images whose best text is their own)."""
    if gather:
        image_features, text_features = gather_with_grad(image_features), gather_with_grad(text_features)
    image, text = F.normalize(image_features, dim=1), F.normalize(text_features, dim=1)
    logits = (logit_scale.exp() * image @ text.T).float()
    targets = torch.arange(len(image), device=image.device)
    loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    return loss, (logits.argmax(1) == targets).float().mean()
