"""Vector quantiser of VQ-VAE / VQGAN: nearest code, straight-through gradient, optional EMA codebook, restarts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class VectorQuantizer(nn.Module):
    """Replace each ``dim``-vector of a ``B,dim,H,W`` map by its nearest of ``num_codes`` codes.

    The loss is ``||sg(z) - e||^2 + beta * ||z - sg(e)||^2`` (van den Oord et al.); with ``ema_decay`` the codes
    instead follow exponential moving averages of their assigned vectors (the first term is dropped and the
    codebook gets no gradient). ``cluster_size`` tracks an EMA of how many vectors each code gets per batch;
    with ``dead_threshold``, codes whose count falls below it are restarted on random vectors of the batch
    (training only), so the codebook stays in use.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, ema_decay: float | None = None,
                 dead_threshold: float | None = None, usage_decay: float = 0.99, eps: float = 1e-5) -> None:
        super().__init__()
        if num_codes < 2 or beta < 0:
            raise ValueError(f"need num_codes >= 2 and beta >= 0, got {num_codes}, {beta}")
        for name, decay in (("ema_decay", ema_decay), ("usage_decay", usage_decay)):
            if decay is not None and not 0.0 < decay < 1.0:
                raise ValueError(f"{name} must lie in (0, 1) (or be null for ema_decay), got {decay}")
        self.num_codes, self.dim, self.beta = num_codes, dim, beta
        self.ema_decay, self.dead_threshold, self.eps = ema_decay, dead_threshold, eps
        self.usage_decay = ema_decay if ema_decay is not None else usage_decay
        self.embedding = nn.Parameter(torch.empty(num_codes, dim).uniform_(-1 / num_codes, 1 / num_codes),
                                      requires_grad=ema_decay is None)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_sum", self.embedding.detach().clone())

    @torch.no_grad()
    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared Euclidean distance) for each row of ``N,dim``."""
        distances = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embedding.t()
                     + self.embedding.pow(2).sum(1)[None])
        return distances.argmin(1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes ``B,dim,H,W`` for code indices ``B,H,W``."""
        return rearrange(F.embedding(indices, self.embedding), "b h w c -> b c h w")

    @torch.no_grad()
    def update_codebook(self, flat: torch.Tensor, one_hot: torch.Tensor) -> None:
        """Training-time bookkeeping: usage EMA, the EMA codebook update, and restarts of dead codes."""
        counts = one_hot.sum(0)
        self.cluster_size.lerp_(counts, 1 - self.usage_decay)
        if self.ema_decay is not None:
            self.embed_sum.lerp_(one_hot.t() @ flat, 1 - self.ema_decay)
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total  # Laplace
            self.embedding.data.copy_(self.embed_sum / smoothed[:, None])
        if self.dead_threshold is None:
            return
        dead = (self.cluster_size < self.dead_threshold).nonzero().squeeze(1)
        if len(dead):
            picks = flat[torch.randint(len(flat), (len(dead),), device=flat.device)]
            self.embedding.data[dead] = picks
            self.cluster_size[dead] = self.dead_threshold
            self.embed_sum[dead] = picks * self.dead_threshold

    @torch.no_grad()
    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest codes ``B,dim,H,W`` of ``z`` and their indices ``B,H,W``, with no gradient or bookkeeping."""
        indices = self.nearest(rearrange(z, "b c h w -> (b h w) c").float()).view(z.shape[0], *z.shape[2:])
        return self.lookup(indices).type(z.dtype), indices

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``z`` -> (straight-through quantised ``z``, VQ loss, {indices B,H,W, perplexity, usage}).

        ``usage`` is the fraction of codes used in this batch; ``perplexity`` the exponential of the entropy of
        the batch's code histogram (``num_codes`` when all are used equally). Codebook updates and restarts
        (training only) happen after the lookup, so this batch is quantised with the codebook it was assigned to.
        """
        quantized, indices = self.quantize(z)
        one_hot = F.one_hot(indices.flatten(), self.num_codes).float()
        if self.training:
            self.update_codebook(rearrange(z.detach(), "b c h w -> (b h w) c").float(), one_hot)
        loss = self.beta * F.mse_loss(z, quantized)
        if self.ema_decay is None:
            loss = loss + F.mse_loss(self.lookup(indices).type(z.dtype), z.detach())
        probs = one_hot.mean(0)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        usage = (probs > 0).float().mean()
        return z + (quantized - z).detach(), loss, {"indices": indices, "perplexity": perplexity, "usage": usage}
