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
from pathlib import Path

from hydra.utils import instantiate

from pixelforge.cli import compose_config, parse
from pixelforge.data.base import SPLITS
from pixelforge.data.shards import shard_sample, write_shards


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the shards (created)")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits to write (default: all)")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    splits = args.splits.split(",")
    problem = (f"--maxcount must be a positive number of samples, got {args.maxcount}" if args.maxcount < 1 else
               f"--splits {args.splits}: each must be one of {', '.join(SPLITS)}" if set(splits) - set(SPLITS)
               else None)
    if problem:
        print(f"make_shards.py: error: {problem}", file=sys.stderr)
        return 2
    datamodule = instantiate(compose_config(*parse(overrides)).data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    streamed = []
    for split in splits:
        dataset = datamodule.dataset(split=split, transform=datamodule.make_transform(train=False))
        samples = (shard_sample(index, dataset[index]) for index in range(len(dataset)))
        shards = write_shards(samples, str(out / f"{split}-%06d.tar"), args.maxcount, total=len(dataset))
        streamed.append(f"\"data.dataset.urls.{split}='{out}/{split}-{{000000..{len(shards) - 1:06d}}}.tar'\"")
        item = dataset[0]
    fields = [key for key in item if key not in ("image", "caption")]
    print("stream them with:\n  data=webdataset " + " ".join(streamed) +
          f" data.dataset.caption={str('caption' in item).lower()} data.dataset.fields=[{','.join(fields)}]"
          f" data.image_size={datamodule.image_size} data.channels={datamodule.channels}" +
          "".join(f" ++data.targets.{name}={classes}" for name, classes in datamodule.targets.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
