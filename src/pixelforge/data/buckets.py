"""Aspect-ratio bucketing, as kohya's sd-scripts train Stable Diffusion: images are grouped into buckets of similar
aspect ratio and about equal pixel count, each batch comes from one bucket, and each image is resized to cover its
bucket and cropped to it, so wide and tall images are trained whole instead of centre-cropped to a square. Each
item carries its crop's top-left corner and its original size (SDXL's micro-conditioning inputs).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2


def make_buckets(image_size: int, step: int = 64, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) buckets: multiples of ``step``, at most ``image_size``² pixels (the most the step allows),
    aspect ratios from 1/``max_ratio`` to ``max_ratio``; sorted from tallest to widest."""
    if step < 1 or image_size < step or max_ratio < 1:
        raise ValueError(f"data.buckets needs 1 <= step ({step}) <= image_size ({image_size}) and max_ratio "
                         f"({max_ratio}) >= 1")
    area, buckets = image_size * image_size, set()
    for width in range(step, int(image_size * max_ratio) + 1, step):
        height = area // width // step * step
        if height >= step and 1 / max_ratio <= width / height <= max_ratio:
            buckets |= {(width, height), (height, width)}
    return sorted(buckets, key=lambda wh: wh[0] / wh[1])


def nearest_bucket(buckets: Sequence[tuple[int, int]], width: int, height: int) -> int:
    """The index of the bucket whose aspect ratio is closest (in log ratio) to ``width`` x ``height``."""
    ratio = math.log(width / height)
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i][0] / buckets[i][1]) - ratio))


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int], random_crop: bool,
                  rng: random.Random) -> tuple[Image.Image, tuple[int, int]]:
    """``image`` resized to cover ``bucket`` (aspect kept) and cropped to it, randomly or centred; with the crop's
    (top, left) in the resized image."""
    width, height = bucket
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    spare_x, spare_y = size[0] - width, size[1] - height
    left = rng.randint(0, spare_x) if random_crop else spare_x // 2
    top = rng.randint(0, spare_y) if random_crop else spare_y // 2
    return image.crop((left, top, left + width, top + height)), (top, left)


TO_TENSOR = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])])


def bucket_item(image: Image.Image, bucket: tuple[int, int], train: bool, flip: bool,
                rng: random.Random) -> dict[str, torch.Tensor]:
    """``image`` fitted to ``bucket`` (a random crop and, with ``flip``, a mirror half the time when ``train``) as a
    tensor in [-1, 1], with ``crop_top_left`` and ``original_size`` (height, width)."""
    original = torch.tensor([image.height, image.width])
    fitted, (top, left) = fit_to_bucket(image, bucket, train, rng)
    if train and flip and rng.random() < 0.5:
        fitted = fitted.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return {"image": TO_TENSOR(fitted), "crop_top_left": torch.tensor([top, left]), "original_size": original}


class BucketedImages(Dataset):
    """A folder dataset (``files`` and ``item_labels``) whose images are fitted to their aspect-ratio buckets.

    Items are the dataset's (``image`` plus its caption or label) with ``crop_top_left`` and ``original_size``
    (height, width). Image sizes come from the files' headers, read once. On the training split the crop is random
    and ``flip`` mirrors half the images.
    """

    def __init__(self, dataset: Any, buckets: Sequence[tuple[int, int]], train: bool, flip: bool = False,
                 seed: int = 0) -> None:
        self.dataset, self.buckets, self.train, self.flip, self.seed = dataset, list(buckets), train, flip, seed
        self.sizes = []
        for path in dataset.files:
            with Image.open(path) as image:
                self.sizes.append(image.size)
        self.bucket_of = [nearest_bucket(self.buckets, w, h) for w, h in self.sizes]

    @property
    def channels(self) -> int:
        return self.dataset.channels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Item ``key``: an index, or (index, epoch) as ``BucketBatchSampler`` gives it, so that loader workers
        that live across epochs still draw each epoch's own crop and flip."""
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = random.Random(repr((self.seed, epoch, index)))
        item = bucket_item(self.dataset.load(index), self.buckets[self.bucket_of[index]], self.train, self.flip, rng)
        return {**item, **self.dataset.item_labels(index)}


class BucketBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of one bucket each. With ``shuffle`` the items of each bucket and then the batches are shuffled by
    ``(seed, epoch)``; the batches are dealt to the ``world`` ranks, each taking the same number (the last ones are
    dropped when they do not divide), so every rank takes the same number of steps. It yields (index, epoch)
    pairs."""

    def __init__(self, dataset: BucketedImages, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0,
                 world: int = 1, drop_last: bool = True) -> None:
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed, self.rank, self.world, self.drop_last = seed, rank, world, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning when an epoch starts: the order of the epoch, and (passed with each index) its random
        crops."""
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """Every rank's batches of this epoch, in order."""
        rng = random.Random(repr((self.seed, self.epoch)))
        members: dict[int, list[int]] = {}
        for index, bucket in enumerate(self.dataset.bucket_of):
            members.setdefault(bucket, []).append(index)
        batches = []
        for bucket in sorted(members):
            indices = members[bucket]
            if self.shuffle:
                rng.shuffle(indices)
            chunks = [indices[i:i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
            batches += [c for c in chunks if len(c) == self.batch_size or not self.drop_last]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = self.batches()
        for batch in batches[self.rank:len(batches) // self.world * self.world:self.world]:
            yield [(index, self.epoch) for index in batch]

    def __len__(self) -> int:
        return len(self.batches()) // self.world
