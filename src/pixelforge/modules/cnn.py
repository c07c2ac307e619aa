"""Small LeNet/AlexNet-style convolutional backbone and the conv-BN-ReLU unit the ResNet shares."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    batch_norm: bool = True,
    relu: bool = True,
) -> list[nn.Module]:
    """Return 'same'-padded conv [-> BatchNorm] [-> ReLU] layers; the conv has a bias only without BN."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class SmallCNN(nn.Module):
    """Conv-pool stages, global average pool and one hidden Linear (none with ``hidden_dim=None``); fast on CPU, any
    image size."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        channels: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 2,
        hidden_dim: int | None = 256,
        dropout: float = 0.25,
        batch_norm: bool = True,
    ) -> None:
        """``image_size`` is unused (global pooling fits any size) but kept for a uniform backbone config."""
        super().__init__()
        if not channels or convs_per_stage < 1:
            raise ValueError(
                f"need at least one stage and one conv per stage, got channels={channels!r}, "
                f"convs_per_stage={convs_per_stage}"
            )
        layers: list[nn.Module] = []
        width = in_channels
        for out in channels:
            for _ in range(convs_per_stage):
                layers += conv_bn(width, out, 3, batch_norm=batch_norm)
                width = out
            # ceil_mode keeps a 1x1 map at 1x1, so deep stacks still accept small images.
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        hidden: list[nn.Module] = []
        if hidden_dim is not None:  # None: the pooled conv features themselves (SimCLR's representation)
            hidden = [nn.Linear(width, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), *hidden)
        self.out_features = int(width if hidden_dim is None else hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the hidden-layer features (B, out_features)."""
        return self.head(self.features(x))
