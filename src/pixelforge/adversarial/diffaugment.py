"""DiffAugment (Zhao et al., 2020): differentiable colour, translation and cut-out, applied to real and fake alike.

Every op draws fresh randomness per sample and is differentiable in the images, so G gets gradients through
the augmentation and D never sees un-augmented data to overfit on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def rand_brightness(x: torch.Tensor) -> torch.Tensor:
    """Add a per-sample offset in [-0.5, 0.5)."""
    return x + (torch.rand(len(x), 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)


def rand_saturation(x: torch.Tensor) -> torch.Tensor:
    """Scale each pixel's deviation from its channel mean by a per-sample factor in [0, 2) (no-op on grey)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (torch.rand(len(x), 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean


def rand_contrast(x: torch.Tensor) -> torch.Tensor:
    """Scale the deviation from the image mean by a per-sample factor in [0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(len(x), 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def rand_translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size in x and y, filling the border with zeros."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    rows = (torch.arange(h, device=x.device)[None, :, None] + dy + sh).expand(b, h, w)
    cols = (torch.arange(w, device=x.device)[None, None, :] + dx + sw).expand(b, h, w)
    padded = F.pad(x, (sw, sw, sh, sh)).permute(0, 2, 3, 1)
    return padded[torch.arange(b, device=x.device)[:, None, None], rows, cols].permute(0, 3, 1, 2)


def rand_cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random square of ``ratio`` x the image size per sample (it may overhang the border)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + 1 - ch % 2, (b, 1, 1), device=x.device) - ch // 2
    left = torch.randint(0, w + 1 - cw % 2, (b, 1, 1), device=x.device) - cw // 2
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


AUGMENTS: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {
    "color": [rand_brightness, rand_saturation, rand_contrast],
    "translation": [rand_translation],
    "cutout": [rand_cutout],
}


def parse_policy(policy: str | None) -> list[str]:
    """``"color,translation,cutout"`` -> its op groups, checked against ``AUGMENTS``; None or "" -> none."""
    names = [name.strip() for name in (policy or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in AUGMENTS]
    if unknown:
        raise ValueError(f"unknown DiffAugment op(s) {unknown} in {policy!r}; choose from {sorted(AUGMENTS)}")
    return names


def diff_augment(x: torch.Tensor, policy: str | None) -> torch.Tensor:
    """Apply the policy's op groups in order to a ``B,C,H,W`` batch (identity for an empty policy)."""
    for name in parse_policy(policy):
        for op in AUGMENTS[name]:
            x = op(x)
    return x
