"""ImageFolderDataset and ImageTextFolderDataset on tiny PNG folders written per test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelforge.data.base import SPLITS
from pixelforge.data.folders import BadImageError, ImageFolderDataset, ImageTextFolderDataset


def write_png(path: Path, seed: int, mode: str = "RGB") -> None:
    """A random 8x6 image at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)


@pytest.fixture
def class_root(tmp_path: Path) -> Path:
    """Ten images of each of the classes 'cat' and 'dog' (one grayscale), plus a hidden folder to ignore."""
    for c, name in enumerate(("dog", "cat")):
        for i in range(10):
            write_png(tmp_path / name / f"{i}.png", seed=10 * c + i, mode="L" if i == 0 else "RGB")
    write_png(tmp_path / ".cache" / "x.png", seed=99)
    return tmp_path


def test_image_folder_labels_from_sorted_folders_and_stratified_splits(class_root: Path) -> None:
    parts = {s: ImageFolderDataset(class_root, s, seed=3) for s in SPLITS}
    train = parts["train"]
    assert train.classes == ["cat", "dog"] and train.num_classes == 2 and train.channels == 3
    assert {s: len(d) for s, d in parts.items()} == {"train": 16, "val": 2, "test": 2}
    files = [f for d in parts.values() for f in d.files]
    assert len(set(files)) == 20 and all(".cache" not in str(f) for f in files)
    for d in parts.values():
        assert sorted(d.labels) == sorted([0, 1] * (len(d) // 2))
        for i in range(len(d)):
            item = d[i]
            assert item["label"] == ["cat", "dog"].index(d.files[i].parent.name)
            assert item["image"].shape == (3, 6, 8) and item["image"].dtype == torch.float32
            assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert ImageFolderDataset(class_root, "val", seed=3).files == parts["val"].files
    assert ImageFolderDataset(class_root, "val", seed=4).files != parts["val"].files


def test_corrupt_image_names_the_file_or_is_skipped_with_a_warning(class_root: Path) -> None:
    bad = class_root / "cat" / "broken.png"
    bad.write_bytes(b"this is not a png")
    dataset = ImageFolderDataset(class_root, fractions=(1.0, 0.0, 0.0))
    with pytest.raises(BadImageError, match="broken.png") as info:
        dataset[dataset.files.index(bad)]
    assert isinstance(info.value, OSError)
    with pytest.warns(UserWarning, match=r"skipping 1 unreadable image files: .*broken\.png"):
        skipped = ImageFolderDataset(class_root, fractions=(1.0, 0.0, 0.0), skip_bad_files=True)
    assert bad not in skipped.files and len(skipped) == 20
    assert all(skipped[i]["image"].shape == (3, 6, 8) for i in range(len(skipped)))


def test_missing_or_empty_roots_name_the_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere") as info:
        ImageFolderDataset(tmp_path / "nowhere")
    assert "root/<class>/<image>.png" in str(info.value)
    write_png(tmp_path / "flat" / "a.png", seed=0)
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path / "flat")
    (tmp_path / "flat" / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_class"):
        ImageFolderDataset(tmp_path / "flat")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageTextFolderDataset(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no captioned images"):
        ImageTextFolderDataset(tmp_path / "flat" / "empty_class")


def test_captions_from_txt_files(tmp_path: Path) -> None:
    for i in range(10):
        write_png(tmp_path / f"group{i % 2}" / f"{i}.png", seed=i)
        (tmp_path / f"group{i % 2}" / f"{i}.txt").write_text(f"  picture number {i}\n")
    parts = {s: ImageTextFolderDataset(tmp_path, s) for s in SPLITS}
    assert sum(len(d) for d in parts.values()) == 10
    assert len({f for d in parts.values() for f in d.files}) == 10
    train = parts["train"]
    for i in range(len(train)):
        item = train[i]
        assert item["caption"] == f"picture number {train.files[i].stem}"
        assert item["image"].shape == (3, 6, 8)
    assert ImageTextFolderDataset(tmp_path, "train").files == train.files


def test_missing_caption_is_an_error_or_skipped(tmp_path: Path) -> None:
    for i in range(5):
        write_png(tmp_path / f"{i}.png", seed=i)
        if i != 3:
            (tmp_path / f"{i}.txt").write_text(f"caption {i}")
    with pytest.raises(FileNotFoundError, match=r"3\.png"):
        ImageTextFolderDataset(tmp_path)
    with pytest.warns(UserWarning, match=r"1 images without a \.txt caption: .*3\.png"):
        dataset = ImageTextFolderDataset(tmp_path, fractions=(1.0, 0.0, 0.0), skip_bad_files=True)
    assert [f.name for f in dataset.files] == ["0.png", "1.png", "2.png", "4.png"]


def test_captions_from_metadata_jsonl(tmp_path: Path) -> None:
    lines = []
    for i in range(6):
        write_png(tmp_path / "images" / f"{i}.png", seed=i)
        lines.append(json.dumps({"file_name": f"images/{i}.png", "text": f"a caption {i}"}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n\n")
    dataset = ImageTextFolderDataset(tmp_path, fractions=(1.0, 0.0, 0.0))
    assert len(dataset) == 6
    item = dataset[2]
    assert item["caption"] == f"a caption {dataset.files[2].stem}" and item["image"].shape == (3, 6, 8)


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [("{not json", "line 2 is not valid JSON"), ('{"file_name": "0.png"}', "line 2 must be an object")],
)
def test_malformed_metadata_line_names_line_and_file(tmp_path: Path, bad_line: str, match: str) -> None:
    write_png(tmp_path / "0.png", seed=0)
    good = json.dumps({"file_name": "0.png", "text": "ok"})
    (tmp_path / "metadata.jsonl").write_text(f"{good}\n{bad_line}\n")
    with pytest.raises(ValueError, match=match) as info:
        ImageTextFolderDataset(tmp_path)
    assert "metadata.jsonl" in str(info.value)


def test_metadata_naming_a_missing_image(tmp_path: Path) -> None:
    write_png(tmp_path / "0.png", seed=0)
    lines = [json.dumps({"file_name": name, "text": "t"}) for name in ("0.png", "gone.png")]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines))
    with pytest.raises(FileNotFoundError, match=r"gone\.png.*line 2"):
        ImageTextFolderDataset(tmp_path)
    with pytest.warns(UserWarning, match=r"gone\.png"):
        dataset = ImageTextFolderDataset(tmp_path, fractions=(1.0, 0.0, 0.0), skip_bad_files=True)
    assert [f.name for f in dataset.files] == ["0.png"]


def test_bad_arguments_name_the_valid_values(class_root: Path) -> None:
    with pytest.raises(ValueError, match="'val'"):
        ImageFolderDataset(class_root, split="validation")
    with pytest.raises(ValueError, match="fractions"):
        ImageFolderDataset(class_root, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="extensions"):
        ImageFolderDataset(class_root, extensions=".png")


def test_grayscale_folder_loads_the_configured_channels(class_root: Path) -> None:
    gray = ImageFolderDataset(class_root, fractions=(1.0, 0.0, 0.0), channels=1)
    assert gray.channels == 1 and {gray[i]["image"].shape for i in range(len(gray))} == {(1, 6, 8)}
    rgb = ImageFolderDataset(class_root, fractions=(1.0, 0.0, 0.0))  # grayscale files come out as RGB
    assert {rgb[i]["image"].shape for i in range(len(rgb))} == {(3, 6, 8)}
    with pytest.raises(ValueError, match=r"channels=2: .*data.channels=1 or data.channels=3"):
        ImageFolderDataset(class_root, channels=2)


def test_image_folder_with_one_channel_trains_from_the_command_line(class_root: Path,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    from pixelforge.cli import main

    argv = ["-t", "--no-test", "-l", str(tmp_path_factory.mktemp("logs")), "experiment=classifier_cnn_digits",
            "data=image_folder", f"data.dataset.root={class_root}", "data.targets.label=2", "data.image_size=8",
            "data.channels=1", "data.num_workers=0", "data.batch_size=4", "trainer.max_steps=2",
            "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null",
            "callbacks.image_logger=null", "trainer.accelerator=cpu", "trainer.devices=1"]
    assert main(argv) == 0


def test_datamodule_rejects_channels_the_dataset_does_not_have(class_root: Path) -> None:
    from functools import partial

    from pixelforge.data import ImageDataModule

    module = ImageDataModule(partial(ImageFolderDataset, class_root, channels=3), channels=1)
    with pytest.raises(ValueError, match=r"data.channels=1, but ImageFolderDataset gives 3-channel .*data.channels=3"):
        module.setup("fit")
