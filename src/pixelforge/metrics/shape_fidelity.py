"""Shape fidelity of samples of the shapes set: the IoU of a sample's foreground with the best-fitting ideal render
of its captioned shape, over every size and position the dataset can draw for the caption.

An attribute classifier trained on crisp renders calls a pinched square a square; no ideal square fits a pinched
one. A sample in the wrong place or of the wrong size fits no render of its caption either, so the score asks for
the captioned shape where and as large as the caption says. A sample *fits* when that IoU reaches the threshold, no
other shape fits it better (at 8-11 px a circle covers most of a square's box, so the IoU alone cannot tell them)
and it has no dent: every shape the dataset draws is convex, but a square 10 px wide whose sides bow in by a pixel
still overlaps its ideal at IoU 0.85-0.9, and a person sees the pinch at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import numpy as np
import torch

from pixelforge.data.shapes import POSITIONS, SHAPES, SIZES, placements, shape_mask

THRESHOLD = 0.85
DENT = 1.0  # px: a background pixel this deep inside the shape's convex hull is a dent (renders: at most 0.23)
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


def convex_hull(points: np.ndarray) -> np.ndarray:
    """``V,2`` vertices of the convex hull of ``N,2`` points, in order (Andrew's monotone chain)."""
    points = np.unique(points, axis=0)  # sorted by x, then y
    if len(points) < 3:
        return points

    def cross(u: np.ndarray, v: np.ndarray) -> float:
        return u[0] * v[1] - u[1] * v[0]

    def half(ordered: np.ndarray) -> list[np.ndarray]:
        chain: list[np.ndarray] = []
        for point in ordered:
            while len(chain) >= 2 and cross(chain[-1] - chain[-2], point - chain[-2]) <= 0:
                chain.pop()
            chain.append(point)
        return chain[:-1]

    return np.array(half(points) + half(points[::-1]))


def dent_depth(mask: torch.Tensor) -> float:
    """How deep, in pixels, the deepest background pixel centre lies inside the convex hull of ``mask``'s pixel
    squares: 0 for a filled square, up to 0.23 for the dataset's own circles and triangles (their staircase edges),
    0.5 for a one-pixel notch in a straight side, and more where a side bows in."""
    filled = mask.cpu().numpy()
    if not filled.any():
        return 0.0
    ys, xs = np.nonzero(filled)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)]).astype(float)
    start = convex_hull(corners)
    edge = np.roll(start, -1, axis=0) - start                                   # V,2
    ys, xs = np.nonzero(~filled)
    offset = np.stack([xs + 0.5, ys + 0.5], 1)[:, None, :] - start[None]       # P,V,2
    side = edge[None, :, 0] * offset[..., 1] - edge[None, :, 1] * offset[..., 0]
    inside = (side >= 0).all(1) | (side <= 0).all(1)
    if not inside.any():
        return 0.0
    along = np.clip((offset * edge).sum(-1) / (edge * edge).sum(-1), 0, 1)     # nearest point on each edge
    distance = np.linalg.norm(offset - along[..., None] * edge, axis=-1).min(1)
    return float(distance[inside].max())


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
                  threshold: float = THRESHOLD) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(``B`` bools: the image fits its captioned shape, ``B`` IoUs with the captioned shape, ``B`` bools: dented)."""
    require(labels, FIT_KEYS)
    scores = fit_iou(images, labels)
    wanted = torch.as_tensor(labels["shape"]).long()
    iou = scores.gather(1, wanted[:, None])[:, 0]
    dented = torch.tensor([dent_depth(mask) > DENT for mask in foreground(images)], dtype=torch.bool)
    return (iou >= threshold) & (scores.argmax(1) == wanted) & ~dented, iou, dented


def summary(fits: torch.Tensor, iou: torch.Tensor, dented: torch.Tensor, shapes: torch.Tensor) -> dict[str, float]:
    """``shape_fit``: share of the ``captioned_fit`` results that fit, ``shape_fit/<shape>`` per captioned shape
    (``shapes``: their indices), ``shape_iou`` the mean IoU with the captioned shape, ``shape_dented`` the share with
    a dent."""
    wanted = torch.as_tensor(shapes).long()
    results = {"shape_fit": fits.float().mean().item(), "shape_iou": iou.mean().item(),
               "shape_dented": dented.float().mean().item()}
    for index, name in enumerate(SHAPES):
        chosen = wanted == index
        if chosen.any():
            results[f"shape_fit/{name}"] = fits[chosen].float().mean().item()
    return results


def shape_fidelity(images: torch.Tensor, labels: Mapping[str, torch.Tensor],
                   threshold: float = THRESHOLD) -> tuple[dict[str, float], torch.Tensor]:
    """(``summary`` of how ``images`` fit their captioned shapes, their ``B`` IoUs with them)."""
    fits, iou, dented = captioned_fit(images, labels, threshold)
    return summary(fits, iou, dented, labels["shape"]), iou
