"""Tiny stand-ins for the downloadable datasets, written in their real on-disk formats."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CELEBA_ATTRS = ["Male", "Smiling", "Young"]
CELEBA_PARTITION = [0, 0, 0, 0, 1, 1, 2, 2]  # official train/valid/test (torchvision needs 2+ per split)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the big-endian idx format torchvision's MNIST reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str, per_class: int = 4) -> None:
    """Fake ``<root>/<folder>/raw`` idx files: ``per_class`` train and one test image of each digit."""
    rng = np.random.default_rng(0)
    for prefix, count in (("train", per_class), ("t10k", 1)):
        labels = np.repeat(np.arange(10), count)
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte",
                  rng.integers(0, 256, (len(labels), 28, 28)))
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)


def write_cifar10(root: Path) -> None:
    """Fake CIFAR-10 batches: two training images per class over five batches, one test image per class."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 2)
    for b in range(5):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        batch = {"data": data, "labels": labels[4 * b:4 * b + 4].tolist()}
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch))
    test = {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                            "truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


def write_celeba(root: Path) -> None:
    """Fake CelebA: eight 12x10 JPGs with the five list files in the official formats."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(CELEBA_PARTITION))]
    rng = np.random.default_rng(0)
    for name in names:
        pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "img_align_celeba" / name)
    smiling = [1 if i % 2 else -1 for i in range(len(names))]
    attr = [str(len(names)), " ".join(CELEBA_ATTRS) + " "]
    attr += [f"{n} -1  {s}  1" for n, s in zip(names, smiling, strict=True)]
    (folder / "list_attr_celeba.txt").write_text("\n".join(attr) + "\n")
    partition = "".join(f"{n} {p}\n" for n, p in zip(names, CELEBA_PARTITION, strict=True))
    (folder / "list_eval_partition.txt").write_text(partition)
    (folder / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    bbox = [str(len(names)), "image_id x_1 y_1 width height"] + [f"{n} 1 2 3 4" for n in names]
    (folder / "list_bbox_celeba.txt").write_text("\n".join(bbox) + "\n")
    header = " ".join(f"{part}_{xy}" for part in ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
                      for xy in "xy")
    marks = [str(len(names)), header] + [f"{n} " + " ".join(["5"] * 10) for n in names]
    (folder / "list_landmarks_align_celeba.txt").write_text("\n".join(marks) + "\n")


def write_fake_dataset(name: str, root: Path) -> None:
    """A tiny stand-in for torchvision dataset ``name`` under ``root`` (call with the ``no_md5`` fixture active)."""
    writers = {
        "mnist": lambda: write_mnist(root, "MNIST"),
        "fashion_mnist": lambda: write_mnist(root, "FashionMNIST"),
        "cifar10": lambda: write_cifar10(root),
        "celeba": lambda: write_celeba(root),
    }
    writers[name]()


def write_captioned_images(root: Path, count: int = 12, size: int = 64) -> None:
    """``count`` random PNGs with same-stem ``.txt`` captions: an image-caption folder."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
        (root / f"{i:03d}.txt").write_text(f"a photo number {i}")
