"""Shard streams (data=webdataset): make_shards.py writes a dataset that streams back exactly; shards are dealt to
ranks and workers without overlap; the training order is a function of (seed, epoch, step); bad samples and
truncated shards are skipped and counted; layout errors and bad patterns fail by name."""

from __future__ import annotations

import io
import shlex
import sys
import tarfile
from itertools import islice
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from pixelforge.cli import compose_config, parse
from pixelforge.data import ImageDataModule
from pixelforge.data.shapes import ShapesDataset
from pixelforge.data.shards import ShardLayoutError, ShardStream, png_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import make_shards  # noqa: E402

pytest.importorskip("webdataset")
FIELDS = ["shape", "color", "size", "position"]
NUM = {"train": 40, "val": 12, "test": 12}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes dataset (40/12/12 items) written by make_shards.py, 8 samples a shard."""
    out = tmp_path_factory.mktemp("shards")
    assert make_shards.main(["--out", str(out), "--maxcount", "8", "data=shapes",
                             f"data.dataset.num_samples={{train:{NUM['train']},val:{NUM['val']},test:{NUM['test']}}}",
                             "data.image_size=16"]) == 0
    return out


def urls(root: Path, split: str = "train") -> dict[str, str]:
    count = len(list(root.glob(f"{split}-*.tar")))
    return {split: str(root / f"{split}-{{000000..{count - 1:06d}}}.tar")}


def stream(root: Path, split: str = "train", **kwargs) -> ShardStream:
    return ShardStream(urls(root, split), split, fields=FIELDS, **kwargs)


def keys(items) -> list[tuple]:
    """What identifies a shapes item: its caption and labels (the images are checked separately)."""
    return [(item["caption"], *(int(item[f]) for f in FIELDS)) for item in items]


def test_written_shards_stream_back_the_dataset_exactly(shards: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    assert sorted(p.name for p in shards.glob("train-*.tar")) == [f"train-{i:06d}.tar" for i in range(5)]
    assert make_shards.main(["--out", str(tmp_path), "--maxcount", "5", "--splits", "val", "data=shapes",
                             f"data.dataset.num_samples={{val:{NUM['val']}}}", "data.image_size=16"]) == 0
    printed = shlex.split(capsys.readouterr().out.split("\n")[1])  # the overrides, as a shell passes them
    pattern = next(word for word in printed if word.startswith("data.dataset.urls.val="))
    others = [pattern.replace(".val=", f".{split}=") for split in ("train", "test")]
    datamodule = instantiate(compose_config(*parse(["experiment=ldm_image_text_folder", *printed, *others])).data)
    streamed = list(datamodule.build("val"))  # val: no shuffling, shards in order
    original = ShapesDataset(split="val", image_size=16, num_samples=NUM["val"])
    assert keys(streamed) == keys(original[i] for i in range(len(original)))
    for item, expected in zip(streamed, (original[i] for i in range(len(original))), strict=True):
        torch.testing.assert_close(item["image"], expected["image"], atol=1 / 127.5, rtol=0)


def test_training_order_is_a_function_of_seed_epoch_and_step(shards: Path) -> None:
    train = stream(shards, shuffle_buffer=16)
    first = keys(train)
    assert keys(train) == first and sorted(first) == sorted(keys(stream(shards, "train", shuffle_buffer=1)))
    train.set_position(epoch=1, step=5)
    second = keys(train)
    assert second != first and sorted(second) == sorted(first)  # one pass: every sample once, in a new order
    train.set_position(epoch=1, step=7)  # a run resumed mid-epoch draws afresh, not a replay
    assert keys(train) != second


def test_ranks_and_workers_read_disjoint_shards_and_an_epoch_length_cycles(shards: Path) -> None:
    readers = []
    for rank in range(2):
        train = stream(shards, epoch_length=40)
        train.distribute(rank, 2)
        share = len(train.urls[rank::2])  # the first pass: this rank's shards, dealt to its two workers
        readers += [[s["url"] for s in islice(train.shards(worker, 2), len(range(worker, share, 2)))]
                    for worker in range(2)]
    every = [url for reader in readers for url in reader]
    assert all(readers) and len(every) == len(set(every)) == 5  # each of the 5 shards read by one reader
    for rank in range(2):
        train = stream(shards, epoch_length=30)
        train.distribute(rank, 2)
        batches = list(DataLoader(train, batch_size=5, num_workers=2))
        assert sum(len(b["caption"]) for b in batches) == 30 == len(train)  # beyond one pass of its 2-3 shards


def test_bad_samples_and_truncated_shards_are_skipped_with_a_warning_then_an_error(tmp_path: Path) -> None:
    good = png_bytes(torch.zeros(3, 4, 4))
    with tarfile.open(tmp_path / "bad-000000.tar", "w") as tar:
        for key, data in (("a", good), ("b", b"not a png"), ("c", good)):
            for suffix, payload in ((".png", data), (".txt", key.encode())):
                info = tarfile.TarInfo(key + suffix)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    whole = (tmp_path / "bad-000000.tar").read_bytes()
    (tmp_path / "bad-000001.tar").write_bytes(whole[: len(whole) // 2 + 100])  # cut mid-way
    pattern = {"train": str(tmp_path / "bad-{000000..000001}.tar")}
    with pytest.warns(UserWarning, match="skipping an unreadable sample or shard"):
        captions = [item["caption"] for item in ShardStream(pattern, "train", shuffle_buffer=1)]
    assert captions.count("c") == 1 and "b" not in captions and captions.count("a") >= 1
    with pytest.raises(RuntimeError, match="more than data.dataset.max_bad_samples=0"):
        list(ShardStream(pattern, "train", max_bad_samples=0))


def test_layout_errors_and_bad_patterns_fail_by_name(tmp_path: Path, shards: Path) -> None:
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        info = tarfile.TarInfo("k.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
    with pytest.raises(ShardLayoutError, match=r"has no image: its fields are \['txt'\], expected one of"):
        list(ShardStream({"train": str(tmp_path / "x.tar")}, "train"))
    with pytest.raises(ShardLayoutError, match="has no caption"):
        list(_uncaptioned(tmp_path))
    with pytest.raises(ShardLayoutError, match=r"its metadata has no \['label'\]"):
        list(ShardStream(urls(shards), "train", fields=["label"]))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        ShardStream({"train": str(tmp_path / "none-{000..003}.tar")}, "train")
    with pytest.raises(ValueError, match="data.dataset.urls.val is not set"):
        ShardStream(urls(shards), "val")
    train = stream(shards)
    with pytest.raises(ValueError, match="set data.dataset.epoch_length"):
        train.distribute(0, 2)
    with pytest.raises(ValueError, match="5 train shards cannot be dealt to 8 ranks"):
        train.distribute(0, 8)


def _uncaptioned(tmp_path: Path) -> ShardStream:
    with tarfile.open(tmp_path / "y.tar", "w") as tar:
        payload = png_bytes(torch.zeros(3, 4, 4))
        info = tarfile.TarInfo("k.png")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return ShardStream({"train": str(tmp_path / "y.tar")}, "train")


class Recorder(L.LightningModule):
    """Trains nothing; records each epoch's captions and the stream position its loader was given."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[int, list[str]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(batch["caption"])
        return self.weight * batch["image"].mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_passes_each_epoch_and_its_start_step_to_the_stream_in_its_workers(shards: Path) -> None:
    def dataset(split, transform):
        return ShardStream({**urls(shards), **urls(shards, "val")}, split, transform, shuffle_buffer=8,
                           epoch_length=20)

    datamodule = ImageDataModule(dataset, batch_size=5, num_workers=2, image_size=16)
    model = Recorder()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule)
    for epoch, step in ((0, 0), (1, 4)):
        expected = ShardStream(urls(shards), "train", shuffle_buffer=8, epoch_length=20)
        expected.set_position(epoch, step)
        loader = DataLoader(expected, batch_size=5, num_workers=2)
        assert model.seen[epoch] == [c for batch in loader for c in batch["caption"]]
    assert model.seen[0] != model.seen[1]
