"""Conditioning embeddings for diffusion denoisers: sinusoidal timesteps, (multi-head) class labels, coordinates and
2D sinusoidal positions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def timestep_frequencies(
    dim: int, max_period: float = 10000.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """The dim // 2 float32 frequencies f_i = max_period^(-i/half) of the sinusoidal timestep embedding."""
    half = dim // 2
    return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=device) / half)


def timestep_embedding(
    t: torch.Tensor, dim: int, max_period: float = 10000.0, freqs: torch.Tensor | None = None
) -> torch.Tensor:
    """(B,) timesteps -> (B,dim) [cos(t·f_i), sin(t·f_i)], f_i = max_period^(-i/half); zero-padded if dim is odd.

    ``freqs`` passes precomputed ``timestep_frequencies(dim, max_period)`` on t's device, to skip rebuilding them.
    """
    if freqs is None:
        freqs = timestep_frequencies(dim, max_period, t.device)
    angles = t.float()[:, None] * freqs[None]
    return F.pad(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1), (0, dim % 2))


class TimestepEmbedding(nn.Module):
    """Sinusoid -> Linear -> SiLU -> Linear: the learned timestep vector that conditions every residual block.

    The sinusoid's frequencies are computed once per device and kept as a plain attribute, not a buffer: they stay
    float32 whatever the module's dtype and out of the state dict.
    """

    def __init__(self, dim: int, embed_dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        self.dim = dim
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.freqs = timestep_frequencies(dim, max_period)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed timesteps (B,) into (B, embed_dim)."""
        if self.freqs.device != t.device:
            self.freqs = self.freqs.to(t.device)
        features = timestep_embedding(t, self.dim, self.max_period, self.freqs)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class LabelEmbedding(nn.Module):
    """Sum of per-head label embeddings; index num_classes[i] is head i's null label, for classifier-free guidance."""

    def __init__(self, num_classes: Sequence[int], dim: int) -> None:
        super().__init__()
        self.num_classes = tuple(int(n) for n in num_classes)
        self.embeddings = nn.ModuleList(nn.Embedding(n + 1, dim) for n in self.num_classes)

    def null_labels(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Null labels for a batch: (B,) for a single head, (B, K) for K heads."""
        null = torch.tensor(self.num_classes, dtype=torch.long, device=device).expand(batch_size, -1)
        return null[:, 0].contiguous() if len(self.num_classes) == 1 else null.contiguous()

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Embed labels (B,) for a single head or (B, K) for K heads into (B, dim)."""
        labels = y[:, None] if y.ndim == 1 else y
        if labels.ndim != 2 or labels.shape[1] != len(self.num_classes):
            raise ValueError(
                f"labels of shape {tuple(y.shape)} do not match num_classes {self.num_classes}; "
                f"expected (B,{len(self.num_classes)})" + (" or (B,)" if len(self.num_classes) == 1 else "")
            )
        return sum(embed(labels[:, i]) for i, embed in enumerate(self.embeddings))


def coordinates(x: torch.Tensor) -> torch.Tensor:
    """B,2,H,W maps of the x and y coordinate of each position of ``x``, from -1 (left/top) to 1 (right/bottom).

    Joined to a U-Net's input (CoordConv, Liu et al. 2018) they tell convolutions and attention, which are blind to
    absolute position, where they are: prompts such as "in the top left" name it.
    """
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(h, 1).expand(h, w)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, w).expand(h, w)
    return torch.stack([xs, ys]).expand(b, -1, -1, -1)


def position_embedding(h: int, w: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(h·w, dim) fixed 2D sinusoidal embedding of the row-major positions of an h x w grid (MAE, Stable
    Diffusion 3): sin and cos of the row at dim // 4 frequencies, then of the column, zero-padded to ``dim``."""
    freqs = timestep_frequencies(2 * (dim // 4), device=device)
    rows = torch.arange(h, dtype=torch.float32, device=device).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.float32, device=device).repeat(h)
    parts = [f(axis[:, None] * freqs[None]) for axis in (rows, cols) for f in (torch.sin, torch.cos)]
    return F.pad(torch.cat(parts, dim=-1), (0, dim - 4 * (dim // 4)))
