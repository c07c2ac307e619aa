"""What every pixelforge dataset shares: the item contract, deterministic splits and the image transform.

Item contract: ``dataset[i]`` is a dict with ``"image"`` (float tensor ``C,H,W`` in [-1, 1]) and, where the
data has them, ``"label"`` (int), ``"caption"`` (str) and further integer attribute labels (shapes:
``"shape"``, ``"color"``, ``"size"``, ``"position"``). Constructors take ``split`` (one of ``SPLITS``) and
``transform`` (PIL image or uint8 ``C,H,W`` tensor -> float tensor in [-1, 1]).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.transforms import v2

SPLITS = ("train", "val", "test")
Transform = Callable[..., torch.Tensor]


def check_split(split: str, valid: Sequence[str] = SPLITS) -> str:
    """Return ``split`` or raise a ValueError naming the valid splits."""
    if split not in valid:
        raise ValueError(f"unknown split {split!r}; valid splits are {', '.join(map(repr, valid))}")
    return split


def split_indices(
    n: int,
    split: str,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    labels: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Indices of ``split`` in a deterministic train/val/test partition of ``range(n)``.

    With ``labels`` the partition is stratified: each class is divided by ``fractions`` on its own, so
    every split holds every class in the same proportion. The result is in a seeded shuffled order (so
    unshuffled val/test batches mix classes even when the source is sorted by label) and depends only on
    ``(n, fractions, seed, labels)``.
    """
    check_split(split)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(np.asarray(labels) == c)
                                                    for c in np.unique(np.asarray(labels))]
    which = SPLITS.index(split)
    chosen = []
    for group in groups:
        group = rng.permutation(group)
        bounds = np.round(np.cumsum([0, *fractions]) * len(group)).astype(int)
        chosen.append(group[bounds[which]:bounds[which + 1]])
    return rng.permutation(np.concatenate(chosen))


def build_transform(
    image_size: int | None = None,
    crop: str | None = "center",
    flip: bool = False,
    train: bool = False,
    interpolation: str = "bilinear",
    translate: float = 0.0,
    rotate: float = 0.0,
) -> Transform:
    """PIL image or uint8/float ``C,H,W`` tensor -> float32 tensor in [-1, 1].

    ``image_size`` resizes the shorter side (None keeps the native size); ``crop`` is ``"center"``,
    ``"random"`` (center on val/test) or None (resize both sides instead of cropping); ``flip`` is a
    random horizontal flip on the training split only; ``translate`` (fraction of the side) and ``rotate``
    (degrees) add a random affine jitter on the training split, the usual augmentation for small digit sets.
    """
    if crop not in ("center", "random", None):
        raise ValueError(f"crop must be 'center', 'random' or null, got {crop!r}")
    mode = v2.InterpolationMode[interpolation.upper()]
    steps: list[Callable] = [v2.ToImage()]
    if image_size is not None:
        if crop is None:
            steps.append(v2.Resize((image_size, image_size), interpolation=mode, antialias=True))
        else:
            steps.append(v2.Resize(image_size, interpolation=mode, antialias=True))
            random_crop = crop == "random" and train
            steps.append(v2.RandomCrop(image_size) if random_crop else v2.CenterCrop(image_size))
    if flip and train:
        steps.append(v2.RandomHorizontalFlip())
    if train and (translate > 0 or rotate > 0):
        steps.append(v2.RandomAffine(degrees=rotate, translate=(translate, translate)))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])]
    return v2.Compose(steps)
