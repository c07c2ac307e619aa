"""Multi-layer perceptron backbone over flattened pixels: the simplest baseline classifier body."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten the image, then [Linear -> LayerNorm? -> GELU -> Dropout] per hidden dim; B,C,H,W -> B,F."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        hidden_dims: Sequence[int] = (512, 256),
        dropout: float = 0.0,
        norm: bool = True,
    ) -> None:
        super().__init__()
        if not hidden_dims:
            raise ValueError(f"hidden_dims must name at least one width, got {hidden_dims!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden) if norm else nn.Identity()]
            layers += [nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.net = nn.Sequential(*layers)
        self.out_features = int(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last hidden layer's activations (B, out_features)."""
        return self.net(x)
