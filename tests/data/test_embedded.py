"""The embedded digit sets and the DataModule: real data, fixed stratified splits, seeded resumable order."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from pixelforge.data import ImageDataModule
from pixelforge.data.base import build_transform, split_indices
from pixelforge.data.embedded import Digits, MNIST5k


def test_mnist5k_is_real_stratified_and_padded() -> None:
    splits = {s: MNIST5k(split=s) for s in ("train", "val", "test")}
    assert [len(d) for d in splits.values()] == [4000, 500, 500]
    for dataset in splits.values():
        assert torch.bincount(dataset.labels).tolist() == [len(dataset) // 10] * 10
    item = splits["train"][0]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() == -1 and item["image"].max() <= 1
    border = splits["train"].images[:, :, :2]  # 28 -> 32 pads two black rows on each side
    assert border.max() == 0
    # real digits: mean intensity of MNIST is ~0.13 of full scale inside the 28x28 frame
    assert 0.08 < splits["train"].images[:, :, 2:30, 2:30].float().mean() / 255 < 0.2
    resized = MNIST5k(split="val", image_size=64, resize_mode="resize")
    assert resized[0]["image"].shape == (1, 64, 64)


def test_splits_are_disjoint_covering_and_deterministic() -> None:
    labels = np.repeat(np.arange(4), 25)
    parts = [split_indices(100, s, seed=3, labels=labels) for s in ("train", "val", "test")]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert np.array_equal(parts[0], split_indices(100, "train", seed=3, labels=labels))
    assert not np.array_equal(parts[0], split_indices(100, "train", seed=4, labels=labels))
    with pytest.raises(ValueError, match="'tset'"):
        split_indices(100, "tset")


def test_digits_upsampled_and_bad_values_named() -> None:
    digits = Digits(split="test", image_size=16)
    assert digits[0]["image"].shape == (1, 16, 16)
    assert sum(len(Digits(split=s, image_size=8)) for s in ("train", "val", "test")) == 1797
    with pytest.raises(ValueError, match="'crop'"):
        Digits(split="test", image_size=16, resize_mode="crop")
    with pytest.raises(ValueError, match="image_size"):
        MNIST5k(image_size=20, resize_mode="pad")


def test_augmentation_only_on_train() -> None:
    image = torch.zeros(1, 16, 16, dtype=torch.uint8)
    image[:, 4:8, 4:8] = 255
    eval_transform = build_transform(train=False, translate=0.3, rotate=30)
    assert all(torch.equal(eval_transform(image), eval_transform(image)) for _ in range(5))
    train_transform = build_transform(train=True, translate=0.3, rotate=30)
    assert any(not torch.equal(train_transform(image), train_transform(image)) for _ in range(5))


def test_datamodule_order_depends_only_on_seed_and_epoch() -> None:
    def epoch_labels(seed: int, epoch: int) -> list[int]:
        dm = ImageDataModule(partial(Digits, image_size=8), batch_size=32, seed=seed, channels=1)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([b["label"] for b in loader]).tolist()

    assert epoch_labels(0, 0) == epoch_labels(0, 0)
    assert epoch_labels(0, 0) != epoch_labels(0, 1)
    assert epoch_labels(0, 0) != epoch_labels(1, 0)
    dm = ImageDataModule(partial(Digits, image_size=8), batch_size=32, eval_batch_size=100, channels=1)
    assert len(epoch_labels(0, 0)) == 1437 // 32 * 32  # drop_last on train
    assert sum(len(b["label"]) for b in dm.val_dataloader()) == len(dm.build("val"))
    with pytest.raises(ValueError, match="batch_size"):
        ImageDataModule(partial(Digits), batch_size=0)
