"""BERT-style text encoder trained from scratch with the diffusion model, as latent diffusion's ``BERTEmbedder``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from pixelforge.modules.attention import TransformerBlock
from pixelforge.modules.encoders.tokenizers import Tokenizer


class TransformerTextEncoder(nn.Module):
    """Prompts -> (tokens (B,T,dim), mask (B,T) bool, True = real token): embeddings, pre-norm blocks, final LN.

    The tokenizer is a submodule, so a word vocabulary travels in this module's ``state_dict``.
    """

    output: ClassVar[str] = "context"  # feeds the U-Net's cross-attention (see pixelforge.conditioning)

    def __init__(
        self,
        tokenizer: Tokenizer,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.dim = dim
        self.token_embedding = nn.Embedding(tokenizer.vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.zeros(1, tokenizer.max_length, dim))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, dropout, attn_dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode token ids (B,T) whose padding ``mask`` (B,T bool, True = real) hides pads from attention."""
        x = self.dropout(self.token_embedding(ids) + self.position_embedding[:, : ids.shape[1]])
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise on the CPU, move to this module's device and encode; ``""`` is the unconditional prompt."""
        device = self.token_embedding.weight.device
        ids, mask = (t.to(device) for t in self.tokenizer(texts))
        return self.embed(ids, mask), mask

    @staticmethod
    def unconditional(batch_size: int) -> list[str]:
        """The null condition for classifier-free guidance: empty prompts."""
        return [""] * batch_size
