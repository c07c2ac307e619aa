"""Image helpers for logging: [-1, 1] tensors to grids and PNGs, and text captions drawn under images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``B,C,H,W`` floats in [-1, 1] -> uint8 ``B,3,H,W`` (grey images repeated to RGB)."""
    images = images.detach().float().cpu().clamp(-1, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return ((images + 1) * 127.5).round().to(torch.uint8)


def grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """A uint8 ``3,H,W`` grid of ``B,C,H,W`` images in [-1, 1], about square unless ``nrow`` is given."""
    nrow = nrow or max(1, int(np.ceil(np.sqrt(len(images)))))
    return make_grid(to_uint8(images), nrow=nrow, padding=2, pad_value=64)


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Write a uint8 ``3,H,W`` tensor as a PNG, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def caption_images(
    images: torch.Tensor,
    texts: Sequence[str],
    colors: Sequence[tuple[int, int, int]] | None = None,
    min_size: int = 64,
) -> torch.Tensor:
    """Draw ``texts[i]`` in a strip under image ``i``; returns ``B,3,H',W'`` in [-1, 1].

    Small images are first enlarged (nearest) to ``min_size`` so the text stays readable.
    """
    images = to_uint8(images)
    scale = max(1, int(np.ceil(min_size / images.shape[-1])))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    font = ImageFont.load_default()
    height, width = images.shape[-2:]
    width = max(width, *(int(font.getlength(text)) + 4 for text in texts))  # every caption fits, one size
    out = []
    for i, (image, text) in enumerate(zip(images, texts, strict=True)):
        canvas = Image.new("RGB", (width, height + 12))
        canvas.paste(Image.fromarray(image.permute(1, 2, 0).numpy()), ((width - image.shape[-1]) // 2, 0))
        fill = colors[i] if colors is not None else (255, 255, 255)
        ImageDraw.Draw(canvas).text((2, height), text, fill=fill, font=font)
        out.append(torch.from_numpy(np.array(canvas)).permute(2, 0, 1))
    return torch.stack(out).float() / 127.5 - 1
