"""Aspect-ratio bucketing (data.buckets): buckets of about equal pixel count, images fitted to the nearest bucket
with their crop and original size, one bucket per batch, every image once per epoch across ranks; streamed shards
batched by bucket as they stream."""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image

from pixelforge.data import ImageDataModule
from pixelforge.data.buckets import fit_to_bucket, make_buckets, nearest_bucket
from pixelforge.data.folders import ImageTextFolderDataset
from pixelforge.data.shards import LATENT, ShardLayoutError, ShardStream, npy_bytes, write_shards

SIZES = [(64, 32)] * 6 + [(32, 64)] * 5 + [(40, 40)] * 7  # wide, tall, square (width, height)


def test_buckets_keep_the_pixel_count_and_the_aspect_range() -> None:
    assert make_buckets(32, step=8, max_ratio=2.0) == [(24, 40), (32, 32), (40, 24)]  # 48x16 is 3:1, outside
    buckets = make_buckets(256, step=64, max_ratio=4.0)
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 256 * 256 and 0.25 <= w / h <= 4 for w, h in buckets)
    assert all((h, w) in buckets for w, h in buckets) and (256, 256) in buckets and (512, 128) in buckets
    assert make_buckets(32, 8)[nearest_bucket(make_buckets(32, 8), 640, 320)] == (40, 24)
    with pytest.raises(ValueError, match="step"):
        make_buckets(32, step=64)


def test_an_image_is_resized_to_cover_its_bucket_and_cropped_to_it() -> None:
    image = Image.new("RGB", (100, 50))
    fitted, (top, left) = fit_to_bucket(image, (40, 24), random_crop=False, rng=random.Random(0))
    assert fitted.size == (40, 24) and top == 0 and left == (48 - 40) // 2  # covered at 48x24, centred
    for seed in range(5):
        _, (top, left) = fit_to_bucket(image, (40, 24), random_crop=True, rng=random.Random(seed))
        assert top == 0 and 0 <= left <= 8


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i, (w, h) in enumerate(SIZES):
        Image.new("RGB", (w, h), (i * 10, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"image {i}")
    return tmp_path


def datamodule(folder: Path, **kwargs) -> ImageDataModule:
    def dataset(split, transform):
        return ImageTextFolderDataset(folder, split, transform, fractions=(1.0, 0.0, 0.0))
    return ImageDataModule(dataset, batch_size=2, image_size=32, buckets={"step": 8, "max_ratio": 2.0},
                           transform={"flip": True}, **kwargs)


def test_batches_hold_one_bucket_and_every_image_once_per_epoch_across_ranks(folder: Path) -> None:
    seen, shapes = [], set()
    for rank in range(2):
        dm = datamodule(folder)
        dm.trainer = type("T", (), {"world_size": 2, "global_rank": rank})()
        loader = dm.train_dataloader()
        loader.batch_sampler.set_epoch(3)
        for batch in loader:
            assert len({tuple(size) for size in batch["original_size"].tolist()}) == 1  # one bucket a batch
            shapes.add(tuple(batch["image"].shape[-2:]))
            seen += batch["caption"]
            height, width = batch["image"].shape[-2:]
            assert height * width <= 32 * 32
    assert shapes == {(24, 40), (40, 24), (32, 32)}  # wide, tall and square buckets (height, width)
    # 6 wide, 5 tall, 7 square in pairs: 3 + 2 + 3 full batches, dealt to 2 ranks: 4 each
    assert len(seen) == len(set(seen)) == 16


def test_items_carry_their_crop_and_original_size_and_epochs_differ(folder: Path) -> None:
    dm = datamodule(folder)
    train = dm.build("train")
    index = next(i for i, f in enumerate(train.dataset.files) if f.name == "0.png")  # 64 x 32
    item = train[(index, 0)]
    assert item["original_size"].tolist() == [32, 64] and item["image"].shape == (3, 24, 40)
    assert int(item["crop_top_left"][0]) == 0 and 0 <= int(item["crop_top_left"][1]) <= 48 - 40  # 48x24 cropped
    sampler = dm.train_dataloader().batch_sampler
    orders = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        orders.append([pair for batch in sampler for pair in batch])
    assert [i for i, _ in orders[0]] != [i for i, _ in orders[1]] and {e for _, e in orders[1]} == {1}
    assert torch.equal(train[(index, 5)]["image"], train[(index, 5)]["image"])  # deterministic per epoch


def test_buckets_on_a_dataset_of_one_size_are_refused() -> None:
    from pixelforge.data.shapes import ShapesDataset

    dm = ImageDataModule(lambda split, transform: ShapesDataset(split, transform, image_size=16, num_samples=8),
                         image_size=16, buckets={"step": 8})
    with pytest.raises(ValueError, match="data.buckets groups the images of image folders"):
        dm.build("train")


def image_shard_samples(folder: Path, latent: bool = False) -> list[dict]:
    """The folder's images and captions as shard samples (with a stand-in cached latent when ``latent``)."""
    samples = []
    for i in range(len(SIZES)):
        sample = {"__key__": f"{i:04d}", "png": (folder / f"{i}.png").read_bytes(),
                  "txt": (folder / f"{i}.txt").read_text()}
        if latent:
            sample[LATENT] = npy_bytes(torch.zeros(4, 4, 4))
        samples.append(sample)
    return samples


def stream_datamodule(folder: Path, split: str, **dataset) -> ImageDataModule:
    """The folder written as 3 shards of ``split``, streamed with buckets (batch 2, eval batch 4)."""
    pytest.importorskip("webdataset")
    pattern = str(folder / "shards" / f"{split}-%06d.tar")
    (folder / "shards").mkdir(exist_ok=True)
    write_shards(image_shard_samples(folder, dataset.pop("latent", False)), pattern, maxcount=6)
    urls = {split: str(folder / "shards" / f"{split}-{{000000..000002}}.tar")}
    return ImageDataModule(partial(ShardStream, urls, **dataset), batch_size=2, eval_batch_size=4, image_size=32,
                           buckets={"step": 8, "max_ratio": 2.0}, transform={"flip": True})


def test_streamed_shards_are_batched_one_bucket_at_a_time(folder: Path) -> None:
    train = stream_datamodule(folder, "train", epoch_length=12).train_dataloader()
    assert len(train) == 6  # 12 samples a rank and epoch, in batches of 2
    batches = list(train)
    assert len(batches) == 6
    for batch in batches:
        assert len(batch["caption"]) == 2 and len({tuple(size) for size in batch["original_size"].tolist()}) == 1
        height, width = batch["image"].shape[-2:]
        assert (height, width) in {(24, 40), (40, 24), (32, 32)} and batch["crop_top_left"].shape == (2, 2)
    # evaluation streams every image once, the part-filled batches of each bucket at the end too
    val = stream_datamodule(folder, "val").val_dataloader()
    captions = [caption for batch in val for caption in batch["caption"]]
    assert sorted(captions) == sorted(f"image {i}" for i in range(len(SIZES)))


def test_streamed_cached_latents_cannot_be_bucketed(folder: Path) -> None:
    loader = stream_datamodule(folder, "train", latent=True).train_dataloader()
    with pytest.raises(ShardLayoutError, match="data.buckets=null"):
        next(iter(loader))
