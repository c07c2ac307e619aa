"""Multi-head self- and cross-attention over ``scaled_dot_product_attention`` and transformer blocks built on them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def _check_heads(dim: int, heads: int) -> None:
    """Reject a width that the heads cannot split evenly, naming both values."""
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}")


# Longest key sequence for which reduced-precision CPU attention runs as two matmuls instead of SDPA's fused kernel,
# whose bf16 backward is 5-10x slower there at these lengths (torch 2.14, one Zen 4 core, forward + backward of
# 32 x 4 heads x 64 queries x 64 keys x 16 dims: 15 ms fused, 1.5 ms explicit; at 1024 keys fused wins again).
EXPLICIT_MAX_KEYS = 256
SOFTMAX_NATIVE_KEYS = 32


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, dropout: float = 0.0
) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v over (B,H,N,d) as two matmuls; fully masked rows give 0 like SDPA.

    The softmax accumulates in float32 either way; its output stays in the input dtype from SOFTMAX_NATIVE_KEYS keys
    on, where that kernel beats a float32 round trip (below, its backward is the slower one).
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(-1, dtype=None if scores.shape[-1] >= SOFTMAX_NATIVE_KEYS else torch.float32)
    if mask is not None:
        weights = weights.masked_fill(~mask.any(-1, keepdim=True), 0.0)
    if dropout:
        weights = F.dropout(weights, dropout)
    return weights.to(v.dtype) @ v


def use_explicit_attention(q: torch.Tensor, k: torch.Tensor) -> bool:
    """True for bf16/fp16 attention on CPU over at most EXPLICIT_MAX_KEYS keys, where two matmuls beat SDPA."""
    return q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and k.shape[-2] <= EXPLICIT_MAX_KEYS


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None = None,
    dropout: float = 0.0,
    upcast: bool = False,
) -> torch.Tensor:
    """Multi-head attention of queries (B,N,D) over keys/values (B,M,D); ``mask`` (B,M bool, True = keep) hides keys,
    or per query as (B or 1,N,M) (a causal mask).

    SDPA, except where ``use_explicit_attention`` says two plain matmuls are faster. ``upcast`` computes it in
    float32 and returns the input dtype (Stability's fp32 attention for SD 2.x, whose fp16 scores can overflow).
    """
    if upcast and q.dtype != torch.float32:
        return attend(q.float(), k.float(), v.float(), heads, mask, dropout).to(q.dtype)
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    attn_mask = None if mask is None else mask[:, None, None] if mask.dim() == 2 else mask[:, None]
    if use_explicit_attention(q, k):
        out = explicit_attention(q, k, v, attn_mask, dropout)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
    return rearrange(out, "b h n d -> b n (h d)")


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with a fused qkv projection, shared by ViTs, text encoders and diffusion U-Nets;
    ``qkv_bias=False`` as in Stable Diffusion's transformers (the output projection keeps its bias)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, qkv_bias: bool = True,
                 upcast: bool = False) -> None:
        super().__init__()
        _check_heads(dim, heads)
        self.heads = heads
        self.dropout = dropout
        self.upcast = upcast
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over tokens ``x`` (B,N,D); ``mask`` (B,N bool, True = keep) hides padded keys."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(attend(q, k, v, self.heads, mask, self.dropout if self.training else 0.0, self.upcast))


class MultiHeadCrossAttention(nn.Module):
    """Queries from tokens ``x`` attend to a conditioning sequence (e.g. text embeddings) of another width."""

    def __init__(self, dim: int, context_dim: int, heads: int, dropout: float = 0.0, qkv_bias: bool = True,
                 upcast: bool = False) -> None:
        super().__init__()
        _check_heads(dim, heads)
        self.heads = heads
        self.dropout = dropout
        self.upcast = upcast
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``x`` (B,N,D) to ``context`` (B,M,context_dim); ``mask`` (B,M bool, True = keep)."""
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.proj(attend(self.q(x), k, v, self.heads, mask, self.dropout if self.training else 0.0,
                                self.upcast))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, attn_dropout: float = 0.0
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, dropout=attn_dropout)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Apply attention then MLP, each as a residual branch; ``mask`` as in MultiHeadSelfAttention."""
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.mlp(self.norm2(x))


class GEGLU(nn.Module):
    """Gated-GELU projection a·GELU(gate) (Shazeer 2020), the feed-forward input of latent-diffusion transformers."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project to twice the hidden width and gate one half by GELU of the other."""
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class CrossTransformerBlock(nn.Module):
    """Pre-norm block of self-attention, cross-attention to a context and a GEGLU feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, context_dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 qkv_bias: bool = True, upcast: bool = False) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = MultiHeadSelfAttention(dim, heads, qkv_bias=qkv_bias, upcast=upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadCrossAttention(dim, context_dim, heads, qkv_bias=qkv_bias, upcast=upcast)
        self.drop = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(GEGLU(dim, hidden), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Update tokens ``x`` (B,N,D) from themselves, then from ``context`` (B,M,C) with its padding mask."""
        x = x + self.drop(self.self_attn(self.norm1(x)))
        x = x + self.drop(self.cross_attn(self.norm2(x), context, context_mask))
        return x + self.mlp(self.norm3(x))
