"""Users' own images: class sub-folders for labels, or same-stem ``.txt`` / ``metadata.jsonl`` for captions.

Both datasets split deterministically with ``split_indices`` and load images with ``channels`` channels (1:
grayscale, 3: RGB; an image of another mode is converted). A file PIL cannot read
raises ``BadImageError`` naming it when its item is loaded; with ``skip_bad_files`` the split's images are
verified once at construction and the bad ones dropped with one warning.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from pixelforge.data.base import Transform, build_transform, check_split, split_indices

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
FOLDER_LAYOUT = "root/<class>/<image>.png (one sub-folder per class, e.g. root/cat/1.png, root/dog/2.jpg)"
CAPTION_LAYOUT = ("root/**/<name>.png with a caption in root/**/<name>.txt, or root/metadata.jsonl with one "
                  '{"file_name": "<path relative to root>", "text": "<caption>"} per line')
METADATA = "metadata.jsonl"
MODES = {1: "L", 3: "RGB"}  # channels -> the PIL mode images are converted to
SHOWN = 5  # bad files named in a warning


class BadImageError(OSError):
    """An image file PIL cannot read; the message names the file so it can be fixed or skipped."""


def load_image(path: Path, channels: int = 3) -> Image.Image:
    """Open ``path`` as a grayscale (``channels=1``) or RGB (3) image, or raise BadImageError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert(MODES[channels])
    except Exception as err:  # PIL raises many types on corrupt data
        raise BadImageError(f"cannot read image {str(path)!r}: {err}. Fix or delete it, or set "
                            "data.dataset.skip_bad_files=true to drop unreadable images") from err


def is_readable(path: Path) -> bool:
    """Whether PIL can open and verify ``path`` (cheap: no full decode)."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception:  # PIL raises many types on corrupt data
        return False
    return True


def warn_skipped(paths: Sequence[Path], why: str) -> None:
    """One warning saying how many files were dropped and why, naming the first few."""
    shown = ", ".join(str(p) for p in paths[:SHOWN]) + (", ..." if len(paths) > SHOWN else "")
    warnings.warn(f"skipping {len(paths)} {why}: {shown}", stacklevel=3)


def check_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    """Lower-case extensions with a leading dot, or a ValueError when none are given."""
    if isinstance(extensions, str) or not extensions:
        raise ValueError(f"extensions must be a non-empty list such as {list(IMAGE_EXTENSIONS)}, "
                         f"got {extensions!r}")
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def check_root(root: str | os.PathLike, layout: str) -> Path:
    """``root`` as a Path, or a FileNotFoundError naming it and the layout expected there."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {str(path)!r} does not exist or is not a directory; "
                                f"expected the layout {layout}")
    return path


def find_images(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Images under ``folder`` (recursively, sorted, hidden files and folders left out)."""
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in extensions and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


class _FileDataset(Dataset):
    """Shared split, verification and loading over a list of image files."""

    files: list[Path]

    def __init__(self, split: str, transform: Transform | None, skip_bad_files: bool, channels: int) -> None:
        if channels not in MODES:
            raise ValueError(f"channels={channels!r}: image folders load 1 (grayscale) or 3 (RGB) channels; set "
                             "data.channels=1 or data.channels=3")
        self.channels = channels
        self.split = check_split(split)
        self.transform = build_transform() if transform is None else transform
        self.skip_bad_files = skip_bad_files

    def _select(self, files: list[Path], fractions: Sequence[float], seed: int,
                labels: list[int] | None = None) -> list[int]:
        """Positions of this split's files, dropping unreadable ones (with a warning) under skip_bad_files."""
        chosen = split_indices(len(files), self.split, fractions, seed, labels).tolist()
        if not self.skip_bad_files:
            return chosen
        bad = [i for i in chosen if not is_readable(files[i])]
        if bad:
            warn_skipped([files[i] for i in bad], "unreadable image files")
        return sorted(set(chosen) - set(bad))

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        """The image of item ``index`` as read (``data.buckets`` fits it to its bucket itself)."""
        return load_image(self.files[index], self.channels)

    def item_labels(self, index: int) -> dict:
        """What item ``index`` holds besides its image."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        return {"image": self.transform(self.load(index)), **self.item_labels(index)}


class ImageFolderDataset(_FileDataset):
    """Labelled images in class sub-folders (``root/<class>/<image>``), like torchvision's ImageFolder.

    Sorted folder names give the label indices (``classes``); ``fractions`` of every class go to
    train/val/test in a split fixed by ``seed``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Transform | None = None,
        fractions: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        skip_bad_files: bool = False,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        channels: int = 3,
    ) -> None:
        super().__init__(split, transform, skip_bad_files, channels)
        self.root = check_root(root, FOLDER_LAYOUT)
        extensions = check_extensions(extensions)
        folders = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not folders:
            raise FileNotFoundError(f"no class sub-folders in image folder {str(self.root)!r}; expected the "
                                    f"layout {FOLDER_LAYOUT}")
        files, labels, empty = [], [], []
        for label, folder in enumerate(folders):
            found = find_images(folder, extensions)
            if not found:
                empty.append(folder.name)
            files += found
            labels += [label] * len(found)
        if empty:
            raise FileNotFoundError(f"class folders {empty} in {str(self.root)!r} hold no images with "
                                    f"extensions {list(extensions)}; expected the layout {FOLDER_LAYOUT}")
        chosen = self._select(files, fractions, seed, labels)
        self.files = [files[i] for i in chosen]
        self.labels = [labels[i] for i in chosen]
        self.classes = [folder.name for folder in folders]
        self.num_classes = len(self.classes)

    def item_labels(self, index: int) -> dict:
        return {"label": self.labels[index]}


class ImageTextFolderDataset(_FileDataset):
    """Captioned images for text-to-image training: ``{"image", "caption"}`` items.

    Captions come from ``root/metadata.jsonl`` when it exists (``file_name`` relative to root, ``text``),
    else from a ``.txt`` file with the same stem next to each image under root. ``fractions`` go to
    train/val/test in a split fixed by ``seed``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Transform | None = None,
        fractions: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        skip_bad_files: bool = False,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        channels: int = 3,
    ) -> None:
        super().__init__(split, transform, skip_bad_files, channels)
        self.root = check_root(root, CAPTION_LAYOUT)
        extensions = check_extensions(extensions)
        if (self.root / METADATA).is_file():
            files, captions = self._read_metadata(self.root / METADATA)
        else:
            files, captions = self._read_txt_captions(find_images(self.root, extensions))
        if not files:
            raise FileNotFoundError(f"no captioned images with extensions {list(extensions)} in "
                                    f"{str(self.root)!r}; expected the layout {CAPTION_LAYOUT}")
        chosen = self._select(files, fractions, seed)
        self.files = [files[i] for i in chosen]
        self.captions = [captions[i] for i in chosen]

    def _read_txt_captions(self, images: list[Path]) -> tuple[list[Path], list[str]]:
        """Pair each image with its same-stem ``.txt`` caption; a missing one is an error unless skipped."""
        missing = [p for p in images if not p.with_suffix(".txt").is_file()]
        if missing and not self.skip_bad_files:
            raise FileNotFoundError(f"image {str(missing[0])!r} has no caption file "
                                    f"{str(missing[0].with_suffix('.txt'))!r} ({len(missing)} images lack "
                                    "one); add captions or set data.dataset.skip_bad_files=true to drop those images")
        if missing:
            warn_skipped(missing, "images without a .txt caption")
        files = [p for p in images if p.with_suffix(".txt").is_file()]
        return files, [p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in files]

    def _read_metadata(self, path: Path) -> tuple[list[Path], list[str]]:
        """Files and captions from ``metadata.jsonl``; a malformed line is a ValueError naming it."""
        files, captions, missing = [], [], []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{str(path)!r} line {number} is not valid JSON ({err}): "
                                 f"{line[:200]!r}") from err
            if not (isinstance(entry, dict) and isinstance(entry.get("file_name"), str)
                    and isinstance(entry.get("text"), str)):
                raise ValueError(f"{str(path)!r} line {number} must be an object with string keys "
                                 f"'file_name' and 'text', got {line[:200]!r}")
            file = self.root / entry["file_name"]
            if not file.is_file():
                if not self.skip_bad_files:
                    raise FileNotFoundError(f"image {str(file)!r} named on line {number} of {str(path)!r} "
                                            "does not exist")
                missing.append(file)
                continue
            files.append(file)
            captions.append(entry["text"])
        if missing:
            warn_skipped(missing, f"missing images named in {path}")
        return files, captions

    def item_labels(self, index: int) -> dict:
        return {"caption": self.captions[index]}
