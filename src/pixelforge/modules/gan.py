"""GAN generators and discriminators: DCGAN (Radford et al.) and SNGAN/BigGAN-style residual pairs.

Generators map ``(z: B,z_dim, y: B or None)`` to images ``B,C,H,W`` in [-1, 1]; discriminators map ``(x, y)`` to one
raw output per sample (``B``). With ``num_classes`` set, a generator is class-conditional (conditional BatchNorm fed
by a shared class embedding, as BigGAN) and a discriminator adds a projection term (Miyato & Koyama).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def num_resamplings(image_size: int, smallest: int) -> int:
    """How many factor-2 up/downsamplings link ``smallest`` and ``image_size`` (a power-of-two multiple of it)."""
    steps = math.log2(image_size / smallest) if image_size >= smallest else -1
    if steps < 1 or steps != int(steps):
        raise ValueError(f"image_size must be {smallest} times a power of two (>= {2 * smallest}), got {image_size}")
    return int(steps)


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectrally normalise every conv, linear and embedding weight of ``module`` in place (top singular value 1)."""
    for m in list(module.modules()):
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.Embedding):
            spectral_norm(m)
    return module


class ProjectionHead(nn.Module):
    """Linear output on features ``h``, plus ``<embed(y), h>`` for a class-conditional (projection) discriminator."""

    def __init__(self, features: int, num_classes: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.linear = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features) if num_classes else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``B,F`` features (and ``B`` labels when conditional) -> ``B`` outputs."""
        out = self.linear(h).squeeze(1)
        if self.embed is None:
            return out
        if y is None:
            raise ValueError(f"this discriminator is class-conditional ({self.num_classes} classes): pass labels y")
        return out + (self.embed(y) * h).sum(1)


class DCGANGenerator(nn.Module):
    """z -> 4x4 by a transposed conv, then stride-2 transposed convs with BatchNorm+ReLU, halving the width.

    A class-conditional generator uses conditional BatchNorm: the class only scales and shifts channels, so all
    spatial structure must come from z (with the label concatenated to z, G learnt one image per class on mnist5k).
    """

    def __init__(self, z_dim: int = 100, channels: int = 1, image_size: int = 32, base_channels: int = 64,
                 num_classes: int | None = None, embed_dim: int = 128) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        cond_dim = embed_dim if num_classes else None
        widths = [base_channels * 2**i for i in reversed(range(num_resamplings(image_size, 4)))]
        convs = [nn.ConvTranspose2d(z_dim, widths[0], 4, 1, 0, bias=False)]
        convs += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False) for a, b in pairwise(widths)]
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(ConditionalBatchNorm2d(width, cond_dim) for width in widths)
        self.out = nn.Sequential(nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh())
        dcgan_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``B,z_dim`` noise (and ``B`` labels when conditional) -> ``B,C,H,W`` images in [-1, 1]."""
        c = self.embed(y) if self.embed is not None else None
        h = z[:, :, None, None]
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = F.relu(norm(conv(h), c))
        return self.out(h)


class DCGANDiscriminator(nn.Module):
    """Stride-2 4x4 convs with LeakyReLU(0.2) down to 4x4 (BatchNorm after all but the first), then a projection head.

    Use ``batch_norm=False`` with gradient penalties (they need per-sample gradients) or spectral norm.
    """

    def __init__(self, channels: int = 1, image_size: int = 32, base_channels: int = 64, num_classes: int | None = None,
                 batch_norm: bool = True, spectral_norm: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        widths = [base_channels * 2**i for i in range(num_resamplings(image_size, 4))]
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for a, b in pairwise(widths):
            layers.append(nn.Conv2d(a, b, 4, 2, 1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(b))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.features = nn.Sequential(*layers, nn.Flatten())  # the projection sees every 4x4 position
        self.head = ProjectionHead(widths[-1] * 16, num_classes)
        dcgan_init(self)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``B,C,H,W`` images (and ``B`` labels when conditional) -> ``B`` logits."""
        return self.head(self.features(x), y)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift are linear in a class embedding (BigGAN); plain affine BatchNorm without one.

    The projections start at zero (scale 1, shift 0) and, fed a shared dense embedding, learn the class far faster
    than per-class lookup tables would.
    """

    def __init__(self, num_features: int, cond_dim: int | None = None) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, affine=cond_dim is None)
        self.scale = nn.Linear(cond_dim, num_features, bias=False) if cond_dim else None
        self.shift = nn.Linear(cond_dim, num_features, bias=False) if cond_dim else None
        for linear in (self.scale, self.shift):
            if linear is not None:
                nn.init.zeros_(linear.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise ``x``; with a class embedding ``c`` (``B,cond_dim``) scale by 1 + W_s c and shift by W_b c."""
        x = self.norm(x)
        if self.scale is None:
            return x
        return x * (1 + self.scale(c)[:, :, None, None]) + self.shift(c)[:, :, None, None]


class GeneratorBlock(nn.Module):
    """Pre-activation residual block that doubles the resolution: (c)BN-ReLU-up-conv3-(c)BN-ReLU-conv3 + up-conv1."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int | None = None) -> None:
        super().__init__()
        self.norm1 = ConditionalBatchNorm2d(in_channels, cond_dim)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = ConditionalBatchNorm2d(out_channels, cond_dim)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.norm1(x, c)), scale_factor=2)
        h = self.conv2(F.relu(self.norm2(self.conv1(h), c)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2))


class DiscriminatorBlock(nn.Module):
    """Residual block ReLU-conv3-ReLU-conv3 [-avgpool] + conv1 [-avgpool]; the first block skips the leading ReLU."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, first: bool = False) -> None:
        super().__init__()
        self.downsample = downsample
        self.first = first
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        learned = downsample or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if learned else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        skip = self.shortcut(x)  # a 1x1 conv commutes with average pooling: pool once, after both
        out = h + skip
        return F.avg_pool2d(out, 2) if self.downsample else out


class ResNetGenerator(nn.Module):
    """SNGAN/BigGAN-style: z -> 4x4 by a linear layer, residual up-blocks to ``image_size``, BN-ReLU-conv3-tanh."""

    def __init__(self, z_dim: int = 128, channels: int = 3, image_size: int = 32, base_channels: int = 256,
                 num_classes: int | None = None, embed_dim: int = 128) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.num_classes = num_classes
        self.base_channels = base_channels
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        self.linear = nn.Linear(z_dim, 16 * base_channels)
        self.blocks = nn.ModuleList(GeneratorBlock(base_channels, base_channels, embed_dim if num_classes else None)
                                    for _ in range(num_resamplings(image_size, 4)))
        self.out = nn.Sequential(nn.BatchNorm2d(base_channels), nn.ReLU(inplace=True),
                                 nn.Conv2d(base_channels, channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``B,z_dim`` noise (and ``B`` labels when conditional) -> ``B,C,H,W`` images in [-1, 1]."""
        c = self.embed(y) if self.embed is not None else None
        h = self.linear(z).view(len(z), self.base_channels, 4, 4)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)


class ResNetDiscriminator(nn.Module):
    """Residual downsampling blocks to 8x8, ``extra_blocks`` more at 8x8, ReLU, global sum pool, projection head."""

    def __init__(self, channels: int = 3, image_size: int = 32, base_channels: int = 128,
                 num_classes: int | None = None, extra_blocks: int = 2, spectral_norm: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        downs = num_resamplings(image_size, 8)
        blocks = [DiscriminatorBlock(channels, base_channels, downsample=True, first=True)]
        blocks += [DiscriminatorBlock(base_channels, base_channels, downsample=True) for _ in range(downs - 1)]
        blocks += [DiscriminatorBlock(base_channels, base_channels, downsample=False) for _ in range(extra_blocks)]
        self.blocks = nn.Sequential(*blocks)
        self.head = ProjectionHead(base_channels, num_classes)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``B,C,H,W`` images (and ``B`` labels when conditional) -> ``B`` outputs."""
        return self.head(F.relu(self.blocks(x)).sum(dim=(2, 3)), y)
