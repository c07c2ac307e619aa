"""Torchvision-compatible ResNet backbones (basic and bottleneck blocks, ImageNet or CIFAR stem)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from pixelforge.modules.cnn import conv_bn


class ResidualBlock(nn.Module):
    """relu(residual(x) + shortcut(x)); subclasses build the residual branch, ending in a BatchNorm."""

    expansion: ClassVar[int] = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.residual = nn.Sequential(*self.residual_layers(in_channels, planes, stride))
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride, relu=False))

    def residual_layers(self, in_channels: int, planes: int, stride: int) -> list[nn.Module]:
        """Layers of the residual branch; the stride sits on its 3x3 conv."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the residual branch to the (projected) input and apply ReLU."""
        return torch.relu(self.residual(x) + self.shortcut(x))


class BasicBlock(ResidualBlock):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def residual_layers(self, in_channels: int, planes: int, stride: int) -> list[nn.Module]:
        """3x3 conv-BN-ReLU, 3x3 conv-BN."""
        return [*conv_bn(in_channels, planes, 3, stride), *conv_bn(planes, planes, 3, relu=False)]


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3, 1x1 expand by 4 (ResNet-50 and deeper, stride on the 3x3 as in torchvision)."""

    expansion = 4

    def residual_layers(self, in_channels: int, planes: int, stride: int) -> list[nn.Module]:
        """1x1 conv-BN-ReLU, 3x3 conv-BN-ReLU, 1x1 conv-BN."""
        return [
            *conv_bn(in_channels, planes, 1),
            *conv_bn(planes, planes, 3, stride),
            *conv_bn(planes, planes * self.expansion, 1, relu=False),
        ]


BLOCKS: dict[str, type[ResidualBlock]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
STEMS = ("imagenet", "cifar")


class ResNet(nn.Module):
    """ResNet body with global average pooling and no fc head; B,C,H,W -> B,out_features."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
        stem: str = "imagenet",
        zero_init_residual: bool = True,
    ) -> None:
        """``image_size`` is unused (global pooling fits any size) but kept for a uniform backbone config."""
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; valid blocks are {', '.join(map(repr, BLOCKS))}")
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; valid stems are {', '.join(map(repr, STEMS))}")
        if not layers:
            raise ValueError(f"layers must name at least one stage, got {layers!r}")
        block_cls = BLOCKS[block]
        if stem == "imagenet":
            stem_layers = [*conv_bn(in_channels, width, 7, 2), nn.MaxPool2d(3, 2, 1)]
        else:
            stem_layers = conv_bn(in_channels, width, 3)
        stages: list[nn.Module] = []
        channels = width
        for i, depth in enumerate(layers):
            planes = width * 2**i
            for j in range(depth):
                stages.append(block_cls(channels, planes, stride=2 if i > 0 and j == 0 else 1))
                channels = planes * block_cls.expansion
        self.body = nn.Sequential(*stem_layers, *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = int(channels)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """Kaiming-init convs; optionally zero each block's last BN so blocks start as identities."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif zero_init_residual and isinstance(m, ResidualBlock):
                nn.init.zeros_(m.residual[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return globally pooled final-stage features (B, out_features)."""
        return self.body(x)


def resnet18(in_channels: int, image_size: int, **kw: Any) -> ResNet:
    """ResNet-18: basic blocks, layers (2, 2, 2, 2)."""
    return ResNet(in_channels, image_size, block="basic", layers=(2, 2, 2, 2), **kw)


def resnet34(in_channels: int, image_size: int, **kw: Any) -> ResNet:
    """ResNet-34: basic blocks, layers (3, 4, 6, 3)."""
    return ResNet(in_channels, image_size, block="basic", layers=(3, 4, 6, 3), **kw)


def resnet50(in_channels: int, image_size: int, **kw: Any) -> ResNet:
    """ResNet-50: bottleneck blocks, layers (3, 4, 6, 3)."""
    return ResNet(in_channels, image_size, block="bottleneck", layers=(3, 4, 6, 3), **kw)
