"""Vision Transformer backbone: patch embedding, class token and pre-norm transformer blocks."""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import nn

from pixelforge.modules.attention import TransformerBlock

POOLS = ("cls", "mean")


class ViT(nn.Module):
    """ViT encoder returning the final-normed class token (or mean patch token); B,C,H,W -> B,dim."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        patch_size: int = 4,
        dim: int = 192,
        depth: int = 6,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        pool: str = "cls",
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; valid pools are {', '.join(map(repr, POOLS))}")
        self.pool = pool
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2 + 1, dim))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, dropout, attn_dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.out_features = int(dim)
        self.apply(self._init_linear)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @staticmethod
    def _init_linear(m: nn.Module) -> None:
        """Truncated-normal Linear weights and zero biases, the usual ViT initialisation."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed patches, prepend the class token, run the blocks and pool to (B, out_features)."""
        tokens = rearrange(self.patch_embed(x), "b d h w -> b (h w) d")
        cls = repeat(self.cls_token, "1 1 d -> b 1 d", b=tokens.shape[0])
        x = self.dropout(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, 0] if self.pool == "cls" else x[:, 1:].mean(dim=1)
