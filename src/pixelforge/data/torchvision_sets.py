"""MNIST, FashionMNIST, CIFAR-10 and CelebA through torchvision, wrapped to the pixelforge item contract.

These need the files on disk: ``download=True`` (``data.dataset.download=true`` on the command line) fetches them
once; without it a missing dataset raises a FileNotFoundError that says where the files are expected.
"""

from __future__ import annotations

import os

import numpy as np
from torch.utils.data import Dataset
from torchvision import datasets

from pixelforge.data.base import Transform, build_transform, check_split, split_indices

DATASETS = {
    "mnist": datasets.MNIST,
    "fashion_mnist": datasets.FashionMNIST,
    "cifar10": datasets.CIFAR10,
    "celeba": datasets.CelebA,
}
CELEBA_SPLITS = {"train": "train", "val": "valid", "test": "test"}
CELEBA_LIST_FILES = (
    "list_attr_celeba.txt",
    "list_eval_partition.txt",
    "identity_CelebA.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
)
CELEBA_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
CIFAR_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
               "batches.meta")


def missing_message(name: str, root: str, download: bool) -> str:
    """Say which files of dataset ``name`` were expected under ``root`` and how to get them."""
    how = ("Pass data.dataset.download=true on the command line (download=True in Python) to fetch them, "
           "or place the files there yourself")
    if name in ("mnist", "fashion_mnist"):
        folder = os.path.join(root, DATASETS[name].__name__, "raw")
        expected = f"the uncompressed idx files {', '.join(os.path.join(folder, f) for f in IDX_FILES)}"
        how += f" (gunzip the .gz files from {DATASETS[name].mirrors[0]})."
    elif name == "cifar10":
        folder = os.path.join(root, datasets.CIFAR10.base_folder)
        expected = f"the folder {folder}{os.sep} with {', '.join(CIFAR_FILES)}"
        how += f" (extract {datasets.CIFAR10.url} into {root})."
    else:
        folder = os.path.join(root, datasets.CelebA.base_folder)
        expected = (f"the images in {os.path.join(folder, 'img_align_celeba')}{os.sep} and the list files "
                    f"{', '.join(os.path.join(folder, f) for f in CELEBA_LIST_FILES)}")
        how += (". torchvision downloads CelebA from Google Drive (needs the gdown package), which often "
                "fails with a 'too many users have viewed or downloaded this file' quota error; then "
                f"download img_align_celeba.zip and the list files by hand from {CELEBA_PAGE}, unzip the "
                f"images into {folder}{os.sep} and put the .txt files next to them.")
    tried = " data.dataset.download=true was set, but the files are still missing or corrupted." if download else ""
    return f"{name} dataset not found or corrupted under root {root!r}.{tried} Expected {expected}. {how}"


class TorchvisionDataset(Dataset):
    """One split of a torchvision dataset as ``{"image", "label"}`` items, so downloadable sets fit in.

    ``name`` is one of ``DATASETS`` (case-insensitive). For MNIST, FashionMNIST and CIFAR-10, ``"train"`` and
    ``"val"`` are a seeded stratified split of the official training set (``val_fraction`` goes to val) and
    ``"test"`` is the official test set; CelebA uses its official train/valid/test partitions and ignores
    ``val_fraction`` and ``seed``. CelebA items carry a ``"label"`` only when ``target_attr`` names one of its
    binary attributes (e.g. ``"Smiling"``). ``indices`` are the items' positions in the official set.
    """

    def __init__(
        self,
        name: str,
        root: str | os.PathLike,
        split: str = "train",
        transform: Transform | None = None,
        download: bool = False,
        val_fraction: float = 0.1,
        seed: int = 0,
        target_attr: str | None = None,
    ) -> None:
        key = name.lower()
        if key not in DATASETS:
            raise ValueError(f"unknown torchvision dataset {name!r}; valid names are {', '.join(DATASETS)}")
        check_split(split)
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if target_attr is not None and key != "celeba":
            raise ValueError(f"target_attr applies to celeba only, got target_attr={target_attr!r} for {key}")
        self.name = key
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        self.split = split
        self.transform = build_transform() if transform is None else transform
        self.channels = 1 if key in ("mnist", "fashion_mnist") else 3
        self._base = self._open(download)
        if key == "celeba":
            self.indices = np.arange(len(self._base))
            column = self._attr_column(target_attr)
            self.labels = None if column is None else self._base.attr[:, column].numpy()
            self.num_classes = None if column is None else 2
            self.classes = None if column is None else [f"not {self._base.attr_names[column]}",
                                                        self._base.attr_names[column]]
        else:
            targets = np.asarray(self._base.targets)
            if split == "test":
                self.indices = np.arange(len(targets))
            else:
                fractions = (1.0 - val_fraction, val_fraction, 0.0)
                self.indices = split_indices(len(targets), split, fractions, seed, targets)
            self.labels = targets[self.indices]
            self.num_classes = 10
            self.classes = list(self._base.classes)

    def _open(self, download: bool) -> datasets.VisionDataset:
        """Open the torchvision dataset, turning 'Dataset not found' into a FileNotFoundError that helps."""
        if self.name == "celeba":
            kwargs = {"split": CELEBA_SPLITS[self.split], "target_type": "attr"}
        else:
            kwargs = {"train": self.split != "test"}
        try:
            return DATASETS[self.name](self.root, download=download, **kwargs)
        except RuntimeError as err:
            message = str(err)
            if not (message.startswith("Dataset") and "not found" in message):
                raise
            raise FileNotFoundError(missing_message(self.name, self.root, download)) from err

    def _attr_column(self, target_attr: str | None) -> int | None:
        """Column of CelebA attribute ``target_attr`` (case-insensitive), or None for unconditional items."""
        if target_attr is None:
            return None
        names = [n.lower() for n in self._base.attr_names]
        if not target_attr or target_attr.lower() not in names:
            valid = ", ".join(n for n in self._base.attr_names if n)
            raise ValueError(f"unknown CelebA attribute target_attr={target_attr!r}; "
                             f"valid attributes are {valid}")
        return names.index(target_attr.lower())

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        image, _ = self._base[int(self.indices[index])]
        image = image.convert("L" if self.channels == 1 else "RGB")
        item = {"image": self.transform(image)}
        if self.labels is not None:
            item["label"] = int(self.labels[index])
        return item
