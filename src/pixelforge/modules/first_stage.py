"""CompVis-style convolutional encoder/decoder of latent-diffusion first stages (KL autoencoder, VQ model), and the
identity first stage of pixel-space diffusion."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pixelforge.modules.unet import AttentionBlock, Downsample, Upsample


def check_groups(channels: Sequence[int], num_groups: int) -> None:
    """Reject widths that GroupNorm cannot split into ``num_groups`` groups, naming the offending width."""
    bad = [c for c in channels if c % num_groups]
    if bad:
        raise ValueError(f"widths {bad} are not divisible by num_groups={num_groups}; pick ch and ch_mult so every "
                         "level's width is a multiple of num_groups, or lower num_groups")


class ResnetBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, 3x3 conv) twice, 1x1 skip when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int = 32, dropout: float = 0.0,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, in_channels, eps=norm_eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(num_groups, out_channels, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B,C_in,H,W -> B,C_out,H,W."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


def check_architecture(ch_mult: Sequence[int], num_res_blocks: int, patch_size: int) -> None:
    """Reject an encoder/decoder shape that cannot be built, naming the bad value."""
    if not ch_mult or num_res_blocks < 1 or patch_size < 1:
        raise ValueError(f"need a non-empty ch_mult, num_res_blocks >= 1 and patch_size >= 1, got "
                         f"{list(ch_mult)}, {num_res_blocks}, {patch_size}")


def downsample_factor(ch_mult: Sequence[int], patch_size: int = 1) -> int:
    """How much smaller the latents are than the images: ``patch_size`` times 2 per level after the first."""
    return patch_size * 2 ** (len(ch_mult) - 1)


def mid_block(channels: int, num_groups: int, dropout: float, norm_eps: float) -> nn.Sequential:
    """ResnetBlock, single-head self-attention, ResnetBlock: the lowest-resolution block of encoder and decoder."""
    return nn.Sequential(ResnetBlock(channels, channels, num_groups, dropout, norm_eps),
                         AttentionBlock(channels, heads=1, num_groups=num_groups, norm_eps=norm_eps),
                         ResnetBlock(channels, channels, num_groups, dropout, norm_eps))


class Encoder(nn.Module):
    """Images -> latent moments: ``num_res_blocks`` ResnetBlocks per level of width ``ch * ch_mult[i]``, a stride-2
    downsample between levels (``2**(len(ch_mult) - 1)`` in all), a mid block with attention, then
    ``z_channels`` outputs (twice that with ``double_z``: mean and log-variance of a Gaussian posterior).
    Stable Diffusion's VAE uses ``norm_eps`` 1e-6 and ``asymmetric_downsample`` (see ``Downsample``).
    ``patch_size`` p > 1 folds each p x p patch into channels first (pixel unshuffle), so no layer runs at full
    resolution and the factor grows by p: the full-resolution level costs most of a small autoencoder's FLOPs."""

    def __init__(self, in_channels: int = 3, ch: int = 128, ch_mult: Sequence[int] = (1, 2, 4, 4),
                 num_res_blocks: int = 2, z_channels: int = 4, double_z: bool = True, dropout: float = 0.0,
                 num_groups: int = 32, norm_eps: float = 1e-5, asymmetric_downsample: bool = False,
                 patch_size: int = 1) -> None:
        super().__init__()
        check_architecture(ch_mult, num_res_blocks, patch_size)
        widths = [ch * m for m in ch_mult]
        check_groups([ch, *widths], num_groups)
        self.patch_size = patch_size
        self.conv_in = nn.Conv2d(in_channels * patch_size**2, ch, 3, padding=1)
        layers: list[nn.Module] = []
        width = ch
        for level, out in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResnetBlock(width, out, num_groups, dropout, norm_eps))
                width = out
            if level < len(widths) - 1:
                layers.append(Downsample(width, asymmetric=asymmetric_downsample))
        self.down = nn.Sequential(*layers)
        self.mid = mid_block(width, num_groups, dropout, norm_eps)
        self.norm_out = nn.GroupNorm(num_groups, width, eps=norm_eps)
        self.conv_out = nn.Conv2d(width, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B,in_channels,H,W -> B,(2*)z_channels,H/f,W/f."""
        h = self.mid(self.down(self.conv_in(F.pixel_unshuffle(x, self.patch_size))))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latents -> images, mirroring ``Encoder``: mid block with attention, then ``num_res_blocks + 1`` ResnetBlocks
    per level from the widest, a nearest-neighbour upsample and 3x3 conv between levels; outputs are unbounded.
    ``patch_size`` p > 1 ends in p x p outputs per position, unfolded into pixels (pixel shuffle)."""

    def __init__(self, out_channels: int = 3, ch: int = 128, ch_mult: Sequence[int] = (1, 2, 4, 4),
                 num_res_blocks: int = 2, z_channels: int = 4, dropout: float = 0.0, num_groups: int = 32,
                 norm_eps: float = 1e-5, patch_size: int = 1) -> None:
        super().__init__()
        check_architecture(ch_mult, num_res_blocks, patch_size)
        widths = [ch * m for m in reversed(ch_mult)]
        check_groups(widths, num_groups)
        width = widths[0]
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = mid_block(width, num_groups, dropout, norm_eps)
        layers: list[nn.Module] = []
        for level, out in enumerate(widths):
            for _ in range(num_res_blocks + 1):
                layers.append(ResnetBlock(width, out, num_groups, dropout, norm_eps))
                width = out
            if level < len(widths) - 1:
                layers.append(Upsample(width))
        self.up = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(num_groups, width, eps=norm_eps)
        self.patch_size = patch_size
        self.conv_out = nn.Conv2d(width, out_channels * patch_size**2, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        """The output conv's weight, where the adaptive GAN weight compares gradient norms."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """B,z_channels,h,w -> B,out_channels,h*f,w*f."""
        h = self.up(self.mid(self.conv_in(z)))
        return F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(h))), self.patch_size)


class IdentityFirstStage(nn.Module):
    """The first stage of pixel-space diffusion: the latents are the images themselves (factor 1)."""

    downsample_factor = 1

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.in_channels = self.embed_dim = channels

    def encode_latent(self, x: torch.Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """The images, unchanged."""
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The latents, which are images."""
        return z
