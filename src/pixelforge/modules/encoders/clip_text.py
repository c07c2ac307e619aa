"""CLIP's text tower (Radford et al. 2021) at any size, trained from scratch: a causal transformer whose prompt
feature is the hidden state at the end-of-text token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from pixelforge.modules.attention import TransformerBlock
from pixelforge.modules.encoders.tokenizers import Tokenizer

LAYERS = ("last", "penultimate")


def check_layer(layer: str, depth: int) -> str:
    """``layer`` if a tower of ``depth`` blocks has it, else a ValueError naming the valid ones."""
    if layer not in LAYERS:
        raise ValueError(f"layer {layer!r} is not one of {LAYERS}")
    if layer == "penultimate" and depth < 2:
        raise ValueError(f"the penultimate layer needs depth >= 2, got {depth}")
    return layer


class CausalTextTransformer(nn.Module):
    """Prompts -> token states: token and learned position embeddings, pre-norm blocks under a causal mask (each
    token sees only those before it, so padding after the end-of-text token changes nothing) and a final LayerNorm.

    ``pooled`` is CLIP's prompt feature, the state at the end-of-text token (the last real one). As a conditioner
    encoder it gives the states of ``layer`` (``penultimate``: the second-to-last block through the final
    LayerNorm, as Stable Diffusion 2.x takes OpenCLIP's) with the padding mask.
    """

    output: ClassVar[str] = "context"  # feeds the U-Net's cross-attention (see pixelforge.conditioning)

    def __init__(self, tokenizer: Tokenizer, dim: int = 256, depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, layer: str = "last") -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.dim = dim
        self.layer = check_layer(layer, depth)
        self.token_embedding = nn.Embedding(tokenizer.vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.zeros(1, tokenizer.max_length, dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, padding mask True = real) on this module's device."""
        device = self.token_embedding.weight.device
        ids, mask = self.tokenizer([texts] if isinstance(texts, str) else list(texts))
        return ids.to(device), mask.to(device)

    def states(self, ids: torch.Tensor, layer: str = "last") -> torch.Tensor:
        """Token states ``B,T,dim`` of ``layer`` for token ``ids`` ``B,T``, through the final LayerNorm."""
        length = ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()[None]
        x = self.token_embedding(ids) + self.position_embedding[:, :length]
        blocks = self.blocks if layer == "last" else self.blocks[:-1]
        for block in blocks:
            x = block(x, causal)
        return self.norm(x)

    def pooled(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP's prompt features ``B,dim``: the last layer's state at each prompt's end-of-text token."""
        ids, mask = self.tokenize(texts)
        states = self.states(ids)
        last = mask.sum(1) - 1
        return states[torch.arange(len(ids), device=ids.device), last]

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(states of ``layer`` ``B,T,dim``, padding mask ``B,T``), as the conditioner's text encoders give them."""
        ids, mask = self.tokenize(texts)
        return self.states(ids, self.layer), mask

    @staticmethod
    def unconditional(batch_size: int) -> list[str]:
        """The null condition for classifier-free guidance: empty prompts."""
        return [""] * batch_size
