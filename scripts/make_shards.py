"""Write a configured dataset as tar shards in img2dataset's layout, to stream it with data=webdataset.

    python scripts/make_shards.py --out /data/shards/mine data=image_text_folder data.dataset.root=/path/to/images
    python scripts/make_shards.py --out shards/shapes experiment=ldm_shapes_txt2img --maxcount 2000

Every other word is a Hydra override composing the data config, as for ``main.py``. Each split goes to
``<out>/<split>-000000.tar`` ...: ``<key>.png`` (the image at ``data.image_size``, as the dataset serves it without
random augmentation; PNG is lossless), ``<key>.txt`` (the caption) and ``<key>.json`` (integer labels). The
overrides that stream them are printed at the end.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from hydra.utils import instantiate
from torch.utils.data import Dataset

from pixelforge.cli import compose_config, parse
from pixelforge.data.base import SPLITS
from pixelforge.data.shards import shard_sample, write_splits


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the shards (created)")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits to write (default: all)")
    return parser.parse_known_args(argv)


def samples(dataset: Dataset) -> Iterator[dict]:
    """The shard samples of ``dataset``'s items, in order."""
    return (shard_sample(index, dataset[index]) for index in range(len(dataset)))


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    if args.maxcount < 1:
        print(f"make_shards.py: error: --maxcount must be a positive number of samples, got {args.maxcount}",
              file=sys.stderr)
        return 2
    datamodule = instantiate(compose_config(*parse(overrides)).data)
    try:
        words = write_splits(datamodule, Path(args.out), args.splits.split(","), args.maxcount, samples)
    except ValueError as error:
        print(f"make_shards.py: error: --splits {args.splits}: {error}", file=sys.stderr)
        return 2
    print("stream them with:\n  " + " ".join(words))
    return 0


if __name__ == "__main__":
    sys.exit(main())
