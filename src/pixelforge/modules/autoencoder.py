"""Convolutional encoder/decoder pair with a vector (``latent_dim``) or spatial (``latent_channels``) bottleneck."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pixelforge.modules.cnn import conv_bn


class ConvAutoencoder(nn.Module):
    """Stride-2 conv stages down to ``image_size / 2**len(channels)``, mirrored by upsample-conv stages.

    Set ``latent_dim`` for a vector code ``B,latent_dim`` (a linear layer on the flattened features), or
    leave it null for a spatial code ``B,latent_channels,h,w`` (a 1x1 conv). The encoder emits
    ``latent_moments`` latent-shaped tensors stacked on dim 1 (2 for a Gaussian VAE: mean and log-variance).
    The decoder returns unbounded ``B,C,H,W`` values; the model decides what they mean
    (pixels, Bernoulli logits or Gaussian means).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        channels: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 1,
        latent_dim: int | None = 128,
        latent_channels: int = 8,
        latent_moments: int = 1,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        factor = 2 ** len(channels)
        if not channels or image_size % factor:
            raise ValueError(f"image_size={image_size} must be divisible by 2**len(channels) = {factor} "
                             f"(channels={list(channels)!r}, at least one stage)")
        if convs_per_stage < 1 or latent_moments < 1:
            raise ValueError(f"need convs_per_stage >= 1 and latent_moments >= 1, got {convs_per_stage}, "
                             f"{latent_moments}")
        self.latent_moments = latent_moments
        size = image_size // factor
        self.latent_shape = (latent_dim,) if latent_dim else (latent_channels, size, size)
        width = channels[-1]

        def stage(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            layers = conv_bn(c_in, c_out, 3, stride, batch_norm)
            for _ in range(convs_per_stage - 1):
                layers += conv_bn(c_out, c_out, 3, batch_norm=batch_norm)
            return layers

        down = conv_bn(in_channels, channels[0], 3, batch_norm=batch_norm)
        for c_in, c_out in zip([channels[0], *channels[:-1]], channels, strict=True):
            down += stage(c_in, c_out, stride=2)
        up: list[nn.Module] = []
        widths = [*reversed(channels), channels[0]]
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), *stage(c_in, c_out, stride=1)]
        up.append(nn.Conv2d(channels[0], in_channels, 3, padding=1))

        if latent_dim:
            self.to_latent = nn.Sequential(nn.Flatten(), nn.Linear(width * size * size, latent_moments * latent_dim))
            self.from_latent = nn.Sequential(nn.Linear(latent_dim, width * size * size),
                                             nn.Unflatten(1, (width, size, size)), nn.ReLU(inplace=True))
        else:
            self.to_latent = nn.Conv2d(width, latent_moments * latent_channels, 1)
            self.from_latent = nn.Sequential(*conv_bn(latent_channels, width, 3, batch_norm=batch_norm))
        self.encoder = nn.Sequential(*down)
        self.decoder = nn.Sequential(*up)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``B,C,H,W`` images -> ``B,latent_moments*latent_shape[0],...`` (moments stacked on dim 1)."""
        return self.to_latent(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``B,*latent_shape`` codes -> unbounded ``B,C,H,W`` decoder outputs."""
        return self.decoder(self.from_latent(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` through the first encoder moment (the code, or the posterior mean)."""
        return self.decode(self.encode(x).chunk(self.latent_moments, dim=1)[0])

