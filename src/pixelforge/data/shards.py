"""Image shards streamed through the ``webdataset`` library: tar files in img2dataset's layout (``<key>.jpg|png|webp``
images, ``<key>.txt`` captions, ``<key>.json`` metadata), from local paths, brace patterns or ``pipe:`` commands.

The stream is a function of ``(seed, epoch, step, rank, worker)``: each pass deals a seeded permutation of the
shards to the ranks and then to their loader workers, so no two ranks (or workers) read the same shard in a
pass, and a training sample goes through a seeded shuffle buffer. ``epoch_length`` fixes the samples per rank
and epoch (a rank that runs out of shards starts a fresh pass), which every rank needs under DDP so that all take
the same number of steps. A run resumed mid-epoch starts the epoch's stream anew from the step it resumes at (a
different draw, not a replay of the batches it already trained on). Unreadable samples and truncated shards are
counted, warned about and skipped until more than ``max_bad_samples`` make it an error; a shard whose first sample
lacks the image, caption or a metadata field the config reads is a layout error at once (a later one is a sample
cut short, as the last of a truncated shard is, and counts as bad).
"""

from __future__ import annotations

import io
import itertools
import json
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, default_collate, get_worker_info
from tqdm import tqdm

from pixelforge.data.base import SPLITS, Transform, build_transform, check_split
from pixelforge.data.buckets import bucket_item, nearest_bucket
from pixelforge.data.folders import MODES
from pixelforge.utils.images import to_uint8

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
LATENT, LATENT_FLIP = "latent.npy", "latent_flip.npy"  # cached first-stage latents (scripts/cache_latents.py)
SHARD_LAYOUT = ("tar shards of <key>.jpg|png|webp images with <key>.txt captions and <key>.json metadata "
                "(img2dataset's layout; scripts/make_shards.py writes them), e.g. /data/shards/{00000..00099}.tar")


def webdataset() -> ModuleType:
    """The webdataset library, or an ImportError saying how to install it."""
    try:
        import webdataset
    except ImportError as error:
        raise ImportError('data=webdataset needs the webdataset library: pip install -e ".[scale]"') from error
    return webdataset


class ShardLayoutError(ValueError):
    """A shard's samples do not hold what the config reads from them (an image, a caption, a metadata field)."""


def is_local(url: str) -> bool:
    """Whether ``url`` names a file here (not a ``pipe:`` command or a remote URL)."""
    return not (url.startswith("pipe:") or "://" in url)


def expand_shards(pattern: str | Sequence[str]) -> list[str]:
    """The shard URLs of a brace pattern (``/data/{00000..00099}.tar``; ``::`` joins several), a list of them, or
    ``pipe:`` commands; every local one must exist."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    urls = [url for p in patterns for url in webdataset().shardlists.expand_urls(str(p))]
    missing = [url for url in urls if is_local(url) and not Path(url).is_file()]
    if not urls or len(missing) == len(urls):
        raise FileNotFoundError(f"the shard pattern {pattern!r} matches no file; expected {SHARD_LAYOUT}")
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(urls)} shards of {pattern!r} do not exist: "
                                f"{missing[:5]}")
    return urls


class BadSamples:
    """webdataset's error handler (True: skip and go on) that counts and warns of each unreadable sample or shard,
    and raises once there are more than ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def __call__(self, error: Exception) -> bool:
        self.count += 1
        if self.count > self.limit:
            raise RuntimeError(f"more than data.dataset.max_bad_samples={self.limit} unreadable samples or shards; "
                               f"the last: {error}") from error
        warnings.warn(f"skipping an unreadable sample or shard ({self.count} so far; more than {self.limit} stop "
                      f"the run): {error}", stacklevel=2)
        return True


class ShardStream(IterableDataset):
    """The ``split`` of a dataset written as tar shards: ``{"image", "caption"}`` items (``caption: false``: no
    caption), plus an integer item per name in ``fields`` read from each sample's JSON metadata (``label``, or
    the shapes' ``shape``, ``color`` ...).

    ``urls`` maps each split to its shards (a pattern or a list). ``shuffle_buffer`` samples are shuffled on the
    training split; ``epoch_length`` is the samples per rank and epoch (None: one pass over the rank's shards).
    """

    def __init__(
        self,
        urls: Mapping[str, str | Sequence[str] | None],
        split: str = "train",
        transform: Transform | None = None,
        channels: int = 3,
        caption: bool = True,
        fields: Sequence[str] = (),
        shuffle_buffer: int = 1000,
        epoch_length: int | None = None,
        seed: int = 0,
        max_bad_samples: int = 100,
    ) -> None:
        self.split = check_split(split)
        if channels not in MODES:
            raise ValueError(f"channels={channels!r}: shards hold 1 (grayscale) or 3 (RGB) channel images")
        if epoch_length is not None and epoch_length < 1:
            raise ValueError(f"data.dataset.epoch_length must be a positive number of samples, got {epoch_length}")
        if shuffle_buffer < 1 or max_bad_samples < 0:
            raise ValueError(f"data.dataset.shuffle_buffer ({shuffle_buffer}) must be positive and "
                             f"max_bad_samples ({max_bad_samples}) non-negative")
        if urls.get(split) is None:
            raise ValueError(f"data.dataset.urls.{split} is not set: give the {split} split's shards, {SHARD_LAYOUT}")
        self.urls = expand_shards(urls[split])
        self.transform = build_transform() if transform is None else transform
        self.channels = channels
        self.caption = caption
        self.fields = list(fields)
        self.shuffle_buffer = shuffle_buffer
        self.epoch_length = epoch_length
        self.seed = seed
        self.max_bad_samples = max_bad_samples
        self.rank, self.world = 0, 1
        self.epoch, self.step = 0, 0
        self.buckets: list[tuple[int, int]] | None = None
        self.batch_size, self.flip = 1, False

    @property
    def train(self) -> bool:
        return self.split == "train"

    def distribute(self, rank: int, world: int) -> None:
        """Read rank ``rank``'s share of the shards, of ``world`` ranks."""
        if len(self.urls) < world:
            raise ValueError(f"{len(self.urls)} {self.split} shards cannot be dealt to {world} ranks so that no two "
                             f"read the same shard: write at least {world} (scripts/make_shards.py --maxcount)")
        if self.train and world > 1 and self.epoch_length is None:
            raise ValueError(f"{world} ranks stream the training shards: set data.dataset.epoch_length (samples "
                             "per rank and epoch) so that every rank takes the same number of steps")
        self.rank, self.world = rank, world

    def set_position(self, epoch: int, step: int) -> None:
        """Where training is: the stream of an epoch is drawn from ``(seed, epoch, step)`` at its start."""
        self.epoch, self.step = epoch, step

    def rng(self, *parts: Any) -> random.Random:
        """A generator seeded by the stream's position and ``parts`` (the same in every process)."""
        return random.Random(repr((self.seed, self.epoch, self.step, self.rank, *parts)))

    def shards(self, worker: int, workers: int) -> Iterator[dict[str, str]]:
        """This worker's shards, pass after pass while an epoch length asks for more: each pass deals a fresh
        seeded permutation (one shared by all ranks) to the ranks and then to their workers."""
        for number in itertools.count():
            order = list(self.urls)
            if self.train:
                random.Random(repr((self.seed, self.epoch, self.step, number))).shuffle(order)
            mine = order[self.rank::self.world][worker::workers]
            if not mine and self.epoch_length is not None:
                raise ValueError(f"{len(self.urls)} {self.split} shards leave loader worker {worker} of rank "
                                 f"{self.rank} without one ({self.world} ranks x {workers} workers): write more "
                                 "shards or lower data.num_workers")
            yield from ({"url": url} for url in mine)
            if self.epoch_length is None:
                return

    def batch_by_bucket(self, buckets: Sequence[tuple[int, int]], batch_size: int, flip: bool = False) -> None:
        """Fit each image to its aspect-ratio bucket (``data.buckets``; see ``pixelforge.data.buckets``) and yield whole
        batches of one bucket each, collated as a bucket fills; ``epoch_length`` then counts ``batch_size`` samples a
        batch, and the part-filled batches left when an evaluation stream ends are yielded too."""
        if batch_size < 1:
            raise ValueError(f"bucketed batches need a positive batch size, got {batch_size}")
        self.buckets, self.batch_size, self.flip = list(buckets), batch_size, flip

    def __len__(self) -> int:
        if self.epoch_length is None:
            raise TypeError("a shard stream without data.dataset.epoch_length has no length")
        return self.epoch_length if self.buckets is None else self.epoch_length // self.batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        bad = BadSamples(self.max_bad_samples)
        samples = webdataset().tarfile_samples(self.shards(worker, workers), handler=bad)
        rng = self.rng(worker)
        if self.train:
            samples = webdataset().shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), rng=rng)(samples)
        items = self.items(samples, bad, rng)
        if self.buckets is not None:
            items = self.bucket_batches(items)
        quota = None
        if self.epoch_length is not None:
            total = len(self)
            quota = total // workers + (worker < total % workers)
        yield from itertools.islice(items, quota)

    def items(self, samples: Iterable[dict[str, Any]], bad: BadSamples,
              rng: random.Random) -> Iterator[dict[str, Any]]:
        """The readable samples as items; bad ones are counted and skipped."""
        good_shards = set()
        for sample in samples:
            try:
                item = {**self.image(sample, rng), **self.labels(sample), **self.latent(sample, rng)}
            except ShardLayoutError as error:
                if sample.get("__url__") not in good_shards:  # the shard's samples are not what the config reads
                    raise
                bad(error)  # one sample cut short, as a truncated shard's last one is
                continue
            except Exception as error:  # PIL raises many types on corrupt data
                bad(error)
                continue
            good_shards.add(sample.get("__url__"))
            yield item

    def image(self, sample: Mapping[str, Any], rng: random.Random) -> dict[str, torch.Tensor]:
        """The sample's image through the transform, or fitted to its bucket (with its crop and original size)."""
        image = self.decode(sample)
        if self.buckets is None:
            return {"image": self.transform(image)}
        if LATENT in sample:
            raise ShardLayoutError(f"shard {sample.get('__url__')} holds cached latents ({LATENT}) of fixed-size "
                                   "images, but data.buckets fits each image to its own bucket: stream the image "
                                   "shards, or set data.buckets=null")
        bucket = self.buckets[nearest_bucket(self.buckets, image.width, image.height)]
        return bucket_item(image, bucket, self.train, self.flip, rng)

    def bucket_batches(self, items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Collated batches of ``batch_size`` items of one bucket, each as its bucket fills; on evaluation splits
        the part-filled ones at the end too (training drops them, as its batches drop the last)."""
        waiting: dict[tuple[int, ...], list[dict[str, Any]]] = {}
        for item in items:
            group = waiting.setdefault(tuple(item["image"].shape), [])
            group.append(item)
            if len(group) == self.batch_size:
                yield default_collate(group)
                group.clear()
        if not self.train:
            yield from (default_collate(group) for group in waiting.values() if group)

    def latent(self, sample: Mapping[str, Any], rng: random.Random) -> dict[str, torch.Tensor]:
        """The sample's cached first-stage latent when it has one (``scripts/cache_latents.py``), as ``latent``; on
        the training split, that of the flipped image half the time when the cache holds both (``--flip``). The
        image stays as it is: with a cached latent it serves the image logs only."""
        if LATENT not in sample:
            return {}
        field = LATENT_FLIP if self.train and LATENT_FLIP in sample and rng.random() < 0.5 else LATENT
        return {"latent": torch.from_numpy(np.load(io.BytesIO(sample[field]), allow_pickle=False))}

    def decode(self, sample: Mapping[str, Any]) -> Image.Image:
        """The sample's image, converted to the stream's channels."""
        field = next((name for name in IMAGE_FIELDS if name in sample), None)
        if field is None:
            raise ShardLayoutError(f"sample {sample.get('__key__')!r} of shard {sample.get('__url__')} has no image: "
                                   f"its fields are {fields_of(sample)}, expected one of {list(IMAGE_FIELDS)}")
        with Image.open(io.BytesIO(sample[field])) as image:
            return image.convert(MODES[self.channels])

    def labels(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """The caption and the metadata fields the config reads, each required."""
        where = f"sample {sample.get('__key__')!r} of shard {sample.get('__url__')}"
        out: dict[str, Any] = {}
        if self.caption:
            if "txt" not in sample:
                raise ShardLayoutError(f"{where} has no caption (.txt): its fields are {fields_of(sample)}; set "
                                       "data.dataset.caption=false for shards without captions")
            out["caption"] = sample["txt"].decode("utf-8").strip()
        if self.fields:
            if "json" not in sample:
                raise ShardLayoutError(f"{where} has no metadata (.json) to read {self.fields} from: its fields "
                                       f"are {fields_of(sample)}")
            meta = json.loads(sample["json"])
            missing = [name for name in self.fields if name not in meta]
            if missing:
                raise ShardLayoutError(f"{where}: its metadata has no {missing} (it has {sorted(meta)}); set "
                                       "data.dataset.fields to fields the shards hold")
            out.update({name: int(meta[name]) for name in self.fields})
        return out


def fields_of(sample: Mapping[str, Any]) -> list[str]:
    """A sample's file extensions (webdataset's own ``__key__``-style entries left out)."""
    return sorted(name for name in sample if not name.startswith("__"))


def png_bytes(image: torch.Tensor) -> bytes:
    """A ``C,H,W`` image in [-1, 1] as PNG bytes (grayscale when it has one channel): lossless, so a stream of the
    written shards gives back the same tensors."""
    pixels = to_uint8(image[None])[0]
    array = pixels[0].numpy() if image.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def shard_sample(index: int, item: Mapping[str, Any]) -> dict[str, Any]:
    """A dataset item as a shard sample: the image as PNG, the caption as ``.txt``, integer labels in ``.json``."""
    sample = {"__key__": f"{index:09d}", "png": png_bytes(item["image"])}
    if "caption" in item:
        sample["txt"] = item["caption"]
    labels = {key: int(value) for key, value in item.items() if key not in ("image", "caption")}
    if labels:
        sample["json"] = labels
    return sample


def npy_bytes(array: torch.Tensor) -> bytes:
    """A tensor as ``.npy`` bytes (read back with ``allow_pickle=False``: no code in a latent file)."""
    buffer = io.BytesIO()
    np.save(buffer, array.numpy(), allow_pickle=False)
    return buffer.getvalue()


def write_shards(samples: Iterable[dict[str, Any]], pattern: str, maxcount: int = 1000,
                 total: int | None = None) -> list[str]:
    """Write shard ``samples`` into tar files at ``pattern`` (``%06d`` numbers them), ``maxcount`` samples each;
    returns the files written."""
    written: list[str] = []
    with webdataset().ShardWriter(pattern, maxcount=maxcount, verbose=0, post=written.append) as writer:
        for sample in tqdm(samples, desc=pattern, unit="sample", total=total):
            writer.write(sample)
    return written


def write_splits(datamodule: Any, out: Path, splits: Sequence[str], maxcount: int,
                 samples_of: Callable[[Any], Iterable[dict[str, Any]]]) -> list[str]:
    """Write each of ``splits`` of an ``ImageDataModule`` (its images as served without random augmentation) into
    ``out/<split>-NNNNNN.tar`` through ``samples_of(dataset)``; returns the overrides that stream them
    (``data=webdataset``, the shard patterns quoted for a shell, caption, fields, image size, channels, targets)."""
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"splits {unknown}: each must be one of {', '.join(SPLITS)}")
    out.mkdir(parents=True, exist_ok=True)
    words = ["data=webdataset"]
    for split in splits:
        dataset = datamodule.dataset(split=split, transform=datamodule.make_transform(train=False))
        shards = write_shards(samples_of(dataset), str(out / f"{split}-%06d.tar"), maxcount, total=len(dataset))
        words.append(f"\"data.dataset.urls.{split}='{out}/{split}-{{000000..{len(shards) - 1:06d}}}.tar'\"")
    item = dataset[0]
    fields = [key for key in item if key not in ("image", "caption")]
    words += [f"data.dataset.caption={str('caption' in item).lower()}", f"data.dataset.fields=[{','.join(fields)}]",
              f"data.image_size={datamodule.image_size}", f"data.channels={datamodule.channels}",
              *(f"++data.targets.{name}={classes}" for name, classes in datamodule.targets.items())]
    return words
