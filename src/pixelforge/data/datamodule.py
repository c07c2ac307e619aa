"""One LightningDataModule for every dataset: splits, transforms and loaders configured by ``data=``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from pixelforge.data.base import SPLITS, Transform, build_transform
from pixelforge.data.buckets import BucketBatchSampler, BucketedImages, make_buckets
from pixelforge.data.fields import WithField
from pixelforge.data.shards import ShardStream

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}


class ImageDataModule(L.LightningDataModule):
    """Builds ``dataset(split=..., transform=...)`` for train/val/test and serves seeded, resumable loaders.

    ``dataset`` is a partial constructor from the config. ``image_size``, ``channels`` and ``targets``
    describe the data for the model config (``${data.channels}`` ...). The training order is a function
    of ``(seed, epoch)`` only, so a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        image_size: int | None = None,
        channels: int = 3,
        targets: Mapping[str, int] | None = None,
        transform: Mapping[str, Any] | None = None,
        seed: int = 0,
        drop_last: bool = True,
        buckets: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be a positive integer, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.image_size = image_size
        self.channels = channels
        self.targets = dict(targets or {})
        self.transform = dict(transform or {})
        self.seed = seed
        self.drop_last = drop_last
        self.buckets = make_buckets(image_size, **buckets) if buckets else None
        self.splits: dict[str, Dataset] = {}

    def build(self, split: str) -> Dataset:
        """The dataset of ``split`` with its transform (random augmentation on train only), built once."""
        if split not in self.splits:
            dataset = self.dataset(split=split, transform=self.make_transform(train=split == "train"))
            if self.buckets:
                dataset = self.bucketed(dataset, train=split == "train")
            channels = getattr(dataset, "channels", self.channels)
            if channels != self.channels:
                raise ValueError(f"data.channels={self.channels}, but {type(dataset).__name__} gives "
                                 f"{channels}-channel images; set data.channels={channels}")
            self.splits[split] = dataset
        return self.splits[split]

    def bucketed(self, dataset: Dataset, train: bool) -> Dataset:
        """``dataset``'s images fitted to their aspect-ratio buckets (``data.buckets``): an image folder's as
        ``BucketedImages``, a shard stream's batched by bucket as it streams."""
        flip = bool(self.transform.get("flip"))
        if isinstance(dataset, ShardStream):
            dataset.batch_by_bucket(self.buckets, self.batch_size if train else self.eval_batch_size, flip)
            return dataset
        if not hasattr(dataset, "item_labels"):
            raise ValueError(f"data.buckets groups the images of image folders (data=image_folder, image_text_folder) "
                             f"and shards (data=webdataset) by aspect ratio; {type(dataset).__name__} has images of "
                             "one size: set data.buckets=null")
        return BucketedImages(dataset, self.buckets, train, flip=flip, seed=self.seed)

    def make_transform(self, train: bool) -> Transform:
        """The configured image transform, with its random augmentation when ``train``."""
        options = dict(self.transform)
        size = self.image_size if options.pop("resize", True) else None
        return build_transform(size, train=train, **options)

    def random_training_options(self) -> list[str]:
        """The data settings (``data.buckets``, ``data.transform``) that make a training image differ from step to
        step (none: item ``i`` is the same image every epoch, so what is computed from it can be computed once)."""
        options = {"flip": False, "crop": "center", "translate": 0.0, "rotate": 0.0, **self.transform}
        random = [f"flip={options['flip']}" if options["flip"] else "",
                  f"crop={options['crop']}" if options["crop"] == "random" and options.get("resize", True) else "",
                  f"translate={options['translate']}" if options["translate"] > 0 else "",
                  f"rotate={options['rotate']}" if options["rotate"] > 0 else ""]
        return ["data.buckets"] * bool(self.buckets) + [f"data.transform.{option}" for option in random if option]

    def attach(self, split: str, key: str, values: torch.Tensor) -> None:
        """From now on item ``i`` of ``split`` also carries ``values[i]`` under ``key`` (one row per item)."""
        self.splits[split] = WithField(self.build(split), key, values)

    def setup(self, stage: str | None = None) -> None:
        for split in STAGE_SPLITS.get(stage, SPLITS):
            self.build(split)

    def streamed(self, split: str) -> bool:
        """Whether ``split`` is a stream (shards) rather than indexed items."""
        return isinstance(self.build(split), IterableDataset)

    def loader(self, split: str, shuffle: bool) -> DataLoader:
        """A DataLoader over ``split``; shuffled through a seeded DistributedSampler (also on one process)."""
        dataset = self.build(split)
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        if isinstance(dataset, IterableDataset):
            return self.stream_loader(dataset, shuffle, rank, world)
        if isinstance(dataset, BucketedImages):  # each batch from one bucket: Lightning sets its sampler's epoch
            sampler = BucketBatchSampler(dataset, self.batch_size if shuffle else self.eval_batch_size, shuffle,
                                         self.seed, rank, world, drop_last=shuffle and self.drop_last)
            return DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers,
                              pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)
        sampler = None
        if shuffle or world > 1:
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed,
                                         drop_last=shuffle and self.drop_last)
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle and self.drop_last and len(dataset) >= batch_size * world,
        )

    def stream_loader(self, dataset: ShardStream, shuffle: bool, rank: int, world: int) -> DataLoader:
        """A DataLoader over a shard stream, which deals its shards to the ranks and workers itself and shuffles
        its training samples. Lightning calls ``set_epoch`` on a loader's sampler when an epoch starts; an iterable
        dataset's loader has only a constant sampler, so that one passes the epoch, and the step it starts at, to
        the stream. Workers start anew each epoch (not persistent), so they see it."""
        dataset.distribute(rank, world)
        batched = dataset.buckets is not None  # the stream collates its own batches, one bucket each
        loader = DataLoader(dataset, batch_size=None if batched else self.batch_size if shuffle else
                            self.eval_batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory,
                            drop_last=shuffle and self.drop_last and not batched)
        trainer = self.trainer
        loader.sampler.set_epoch = lambda epoch: dataset.set_position(epoch, trainer.global_step if trainer else 0)
        return loader

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)
