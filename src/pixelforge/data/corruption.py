"""Input corruptions for denoising autoencoders, on images in [-1, 1]; ``strength`` is each one's single knob."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch


def pixel_mask(x: torch.Tensor, fraction: float, patch_size: int = 1,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """``B,1,H,W`` boolean mask choosing ``patch_size``-square patches with probability ``fraction`` each."""
    b, _, h, w = x.shape
    cells = (b, 1, -(-h // patch_size), -(-w // patch_size))
    mask = torch.rand(cells, generator=generator, device=x.device) < fraction
    return mask.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)[..., :h, :w]


def gaussian_noise(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add N(0, strength^2) noise per pixel and channel (not clipped, so the noise std is exactly ``strength``)."""
    return x + strength * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def mask(x: torch.Tensor, strength: float, patch_size: int = 1, fill: float = 0.0,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Cut-out: set a ``strength`` share of ``patch_size``-square patches (all channels) to ``fill`` (0: grey)."""
    return torch.where(pixel_mask(x, strength, patch_size, generator), torch.full_like(x, fill), x)


def salt_pepper(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Set a ``strength`` share of pixels (all channels) to white (+1) or black (-1), each with probability 1/2."""
    hit = pixel_mask(x, strength, generator=generator)
    salt = torch.rand(hit.shape, generator=generator, device=x.device) < 0.5
    return torch.where(hit, salt.to(x.dtype) * 2 - 1, x)


CORRUPTIONS: dict[str, Callable[..., torch.Tensor]] = {"gaussian": gaussian_noise, "mask": mask,
                                                       "salt_pepper": salt_pepper}


def build_corruption(kind: str, strength: float, **options) -> Callable[..., torch.Tensor]:
    """``corrupt(x, generator=None)`` for one of ``CORRUPTIONS`` (``options`` e.g. ``patch_size`` for ``mask``)."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption kind {kind!r}; valid: {sorted(CORRUPTIONS)}")
    if strength < 0 or (kind != "gaussian" and strength > 1):
        limit = "a noise std >= 0" if kind == "gaussian" else "a share of pixels in [0, 1]"
        raise ValueError(f"corruption strength for {kind!r} must be {limit}, got {strength}")
    return partial(CORRUPTIONS[kind], strength=strength, **options)
