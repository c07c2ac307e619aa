"""TorchvisionDataset on tiny fake copies of the MNIST, FashionMNIST, CIFAR-10 and CelebA files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_mnist

from pixelforge.data.torchvision_sets import TorchvisionDataset


def check_items(dataset: TorchvisionDataset, shape: tuple[int, ...]) -> None:
    """Every item holds a float image of ``shape`` in [-1, 1] and, where labelled, its int label."""
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["image"].shape == shape and item["image"].dtype == torch.float32
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        if dataset.labels is None:
            assert "label" not in item
        else:
            assert isinstance(item["label"], int) and item["label"] == dataset.labels[i]


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_splits_stratified_disjoint_deterministic(tmp_path: Path, name: str, folder: str) -> None:
    write_mnist(tmp_path, folder)
    train = TorchvisionDataset(name.upper(), str(tmp_path), "train", val_fraction=0.25)
    val = TorchvisionDataset(name, str(tmp_path), "val", val_fraction=0.25)
    test = TorchvisionDataset(name, str(tmp_path), "test")
    assert (len(train), len(val), len(test)) == (30, 10, 10)
    assert set(train.indices).isdisjoint(val.indices)
    assert sorted([*train.indices, *val.indices]) == list(range(40))
    assert sorted(val.labels.tolist()) == list(range(10))
    assert train.channels == 1 and train.num_classes == 10 and len(train.classes) == 10
    again = TorchvisionDataset(name, str(tmp_path), "val", val_fraction=0.25)
    assert np.array_equal(again.indices, val.indices)
    assert torch.equal(again[0]["image"], val[0]["image"])
    other = TorchvisionDataset(name, str(tmp_path), "val", val_fraction=0.25, seed=1)
    assert not np.array_equal(other.indices, val.indices)
    check_items(train, (1, 28, 28))
    check_items(test, (1, 28, 28))


def test_cifar10_items_and_splits(cifar_root: Path) -> None:
    train = TorchvisionDataset("cifar10", cifar_root, "train", val_fraction=0.5)
    val = TorchvisionDataset("cifar10", cifar_root, "val", val_fraction=0.5)
    test = TorchvisionDataset("cifar10", cifar_root, "test")
    assert (len(train), len(val), len(test)) == (10, 10, 10)
    assert sorted(train.labels.tolist()) == sorted(val.labels.tolist()) == list(range(10))
    assert set(train.indices).isdisjoint(val.indices)
    assert train.channels == 3 and train.classes[0] == "airplane" and train.num_classes == 10
    check_items(train, (3, 32, 32))
    check_items(test, (3, 32, 32))


def test_celeba_official_partitions_and_attribute_label(celeba_root: Path) -> None:
    sizes = {s: len(TorchvisionDataset("celeba", celeba_root, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 4, "val": 2, "test": 2}
    unconditional = TorchvisionDataset("celeba", celeba_root, "train")
    assert unconditional.num_classes is None and unconditional.channels == 3
    check_items(unconditional, (3, 10, 12))
    smiling = TorchvisionDataset("celeba", celeba_root, "train", target_attr="smiling")
    assert smiling.num_classes == 2 and smiling.classes == ["not Smiling", "Smiling"]
    assert [smiling[i]["label"] for i in range(4)] == [0, 1, 0, 1]
    check_items(smiling, (3, 10, 12))
    with pytest.raises(ValueError, match="Smiling"):
        TorchvisionDataset("celeba", celeba_root, target_attr="Frowning")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mnist", os.path.join("MNIST", "raw", "train-images-idx3-ubyte")),
        ("fashion_mnist", os.path.join("FashionMNIST", "raw", "t10k-labels-idx1-ubyte")),
        ("cifar10", "cifar-10-batches-py"),
        ("celeba", os.path.join("celeba", "img_align_celeba")),
    ],
)
def test_missing_files_without_download_say_where_and_how(tmp_path: Path, name: str, expected: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        TorchvisionDataset(name, tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "download" in message
    assert os.path.join(str(tmp_path / "nowhere"), expected) in message
    if name == "celeba":
        assert "list_eval_partition.txt" in message and "Google Drive" in message


def test_bad_arguments_name_the_valid_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cifar10"):
        TorchvisionDataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="'val'"):
        TorchvisionDataset("mnist", tmp_path, split="valid")
    with pytest.raises(ValueError, match="val_fraction"):
        TorchvisionDataset("mnist", tmp_path, val_fraction=1.0)
    with pytest.raises(ValueError, match="celeba"):
        TorchvisionDataset("mnist", tmp_path, target_attr="Smiling")
