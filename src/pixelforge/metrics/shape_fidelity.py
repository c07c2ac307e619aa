"""Shape fidelity of samples of the shapes set: the IoU of a sample's foreground with the best-fitting ideal render
of its captioned shape, over every size and position the dataset can draw for the caption.

An attribute classifier trained on crisp renders calls a pinched square a square; no ideal square fits a pinched
one. A sample in the wrong place or of the wrong size fits no render of its caption either, so the score asks for
the captioned shape where and as large as the caption says. A sample *fits* when that IoU reaches the threshold and
no other shape fits it better: at 8-11 px a circle covers most of a square's box, so the IoU alone cannot tell them.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import torch

from pixelforge.data.shapes import POSITIONS, SHAPES, SIZES, placements, shape_mask

THRESHOLD = 0.85
FIT_KEYS = ("shape", "size", "position")


def foreground(images: torch.Tensor) -> torch.Tensor:
    """``B,H,W`` bool mask of the pixels brighter than half in any channel of ``B,3,H,W`` images in [-1, 1]: the
    shape, since every shape is a pure colour at full strength in at least one channel on black."""
    return images.amax(dim=1) > 0


@cache
def ideal_masks(shape: int, size: int, position: int, image_size: int) -> torch.Tensor:
    """``K,H,W`` bool masks of every render the dataset can draw for these attribute indices."""
    boxes = placements(SIZES[size], POSITIONS[position], image_size)
    masks = torch.zeros(len(boxes), image_size, image_size, dtype=torch.bool)
    for k, (side, left, top) in enumerate(boxes):
        masks[k, top:top + side, left:left + side] = torch.from_numpy(shape_mask(SHAPES[shape], side))
    return masks


def require(labels: Mapping[str, torch.Tensor], keys: tuple[str, ...]) -> None:
    """Raise a ValueError naming the ``keys`` that ``labels`` lacks."""
    missing = [key for key in keys if key not in labels]
    if missing:
        raise ValueError(f"shape fidelity needs the labels {FIT_KEYS}; missing {missing}")


def fit_iou(images: torch.Tensor, labels: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``B,S`` best IoU of each image's foreground with an ideal render of each of the ``S`` shapes at its
    ``size``/``position`` labels (index tensors of length ``B``; a ``shape`` label is not needed here)."""
    require(labels, FIT_KEYS[1:])
    masks = foreground(images)
    scores = torch.empty(len(images), len(SHAPES))
    for i, mask in enumerate(masks):
        for shape in range(len(SHAPES)):
            ideal = ideal_masks(shape, int(labels["size"][i]), int(labels["position"][i]), images.shape[-1])
            scores[i, shape] = ((ideal & mask).sum((1, 2)) / (ideal | mask).sum((1, 2))).max()
    return scores


def captioned_fit(images: torch.Tensor, labels: Mapping[str, torch.Tensor],
                  threshold: float = THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """(``B`` bools: the image fits its captioned shape, ``B`` IoUs with the captioned shape)."""
    require(labels, FIT_KEYS)
    scores = fit_iou(images, labels)
    wanted = torch.as_tensor(labels["shape"]).long()
    iou = scores.gather(1, wanted[:, None])[:, 0]
    return (iou >= threshold) & (scores.argmax(1) == wanted), iou


def shape_fidelity(images: torch.Tensor, labels: Mapping[str, torch.Tensor],
                   threshold: float = THRESHOLD) -> tuple[dict[str, float], torch.Tensor]:
    """(``shape_fit``: share of images that fit their captioned shape, ``shape_fit/<shape>`` per captioned shape
    and ``shape_iou`` the mean IoU with the captioned shape; the ``B`` IoUs with it)."""
    fits, iou = captioned_fit(images, labels, threshold)
    wanted = torch.as_tensor(labels["shape"]).long()
    results = {"shape_fit": fits.float().mean().item(), "shape_iou": iou.mean().item()}
    for index, name in enumerate(SHAPES):
        chosen = wanted == index
        if chosen.any():
            results[f"shape_fit/{name}"] = fits[chosen].float().mean().item()
    return results, iou
