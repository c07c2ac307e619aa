"""PatchGAN discriminator (Isola et al., as in taming-transformers): one real/fake logit per overlapping patch."""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "group", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm (pix2pix/taming), GroupNorm (batch-independent, 32 groups at most) or nothing."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    return nn.Identity()


class NLayerDiscriminator(nn.Module):
    """``n_layers`` stride-2 4x4 convs doubling the width from ``ndf`` (at most 8x), one stride-1 conv, a 1-channel
    conv: ``B,C,H,W`` -> ``B,1,h,w`` logits; 70x70 receptive field with the defaults."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        if norm not in NORMS or n_layers < 1:
            raise ValueError(f"need norm in {NORMS} and n_layers >= 1, got {norm!r}, {n_layers}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=norm == "none"), norm_layer(norm, out),
                       nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        for module in self.modules():  # DCGAN initialisation, as pix2pix
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits ``B,1,h,w`` for images in [-1, 1]."""
        return self.net(x)
