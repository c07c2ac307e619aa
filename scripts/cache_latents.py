"""Encode a configured dataset once with a frozen first stage into tar shards of latents, to train latent diffusion
from them without running the encoder in the training step (data=webdataset reads the latents; the first stage
stays in the model for the image logs and sampling).

    python scripts/cache_latents.py --first_stage logs/<autoencoder_kl run> --out /data/latents/pets \\
        data=image_text_folder data.dataset.root=/path/to/images data.image_size=256 --flip

``--first_stage`` is an autoencoder run or a latent-diffusion run (its first stage). Each sample holds the image
(PNG, for the image logs), its caption and labels, and ``latent.npy``: the unscaled posterior mean (the model
applies its scale_factor); with ``--flip`` also ``latent_flip.npy``, the latent of the mirrored image, which the
training stream takes half the time (the random flip a cache would otherwise lose). Train on them with the LDM
recipe whose first stage made them and the printed overrides.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch.utils.data import Dataset

from pixelforge.callbacks.latent_cache import encode_split
from pixelforge.cli import compose_config, parse
from pixelforge.data.base import SPLITS
from pixelforge.data.shards import LATENT, LATENT_FLIP, npy_bytes, shard_sample, write_splits
from pixelforge.inference.arguments import load_run_or_exit
from pixelforge.models.diffusion import DiffusionModel


class Mirrored(Dataset):
    """A dataset's items with their images flipped left to right."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        return {**item, "image": item["image"].flip(-1)}


def latent_samples(dataset: Dataset, first_stage: torch.nn.Module, flip: bool, batch_size: int,
                   device: torch.device) -> Iterator[dict]:
    """The shard samples of ``dataset`` with their latents (and the mirrored images' with ``flip``), encoded on
    ``device``."""
    latents = encode_split(first_stage, dataset, batch_size, device)
    mirrored = encode_split(first_stage, Mirrored(dataset), batch_size, device) if flip else None
    for index in range(len(dataset)):
        sample = {**shard_sample(index, dataset[index]), LATENT: npy_bytes(latents[index])}
        if mirrored is not None:
            sample[LATENT_FLIP] = npy_bytes(mirrored[index])
        yield sample


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first_stage", required=True, help="an autoencoder run, or a latent-diffusion run")
    parser.add_argument("--out", required=True, help="folder for the shards (created)")
    parser.add_argument("--flip", action="store_true", help="also cache the latents of the mirrored images")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    parser.add_argument("--batch_size", type=int, default=64, help="images encoded at once")
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits to write (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    if args.maxcount < 1 or args.batch_size < 1:
        print(f"cache_latents.py: error: --maxcount ({args.maxcount}) and --batch_size ({args.batch_size}) must be "
              "positive", file=sys.stderr)
        return 2
    _, model = load_run_or_exit(args.first_stage, None, "cache_latents.py")
    first_stage = (model.first_stage if isinstance(model, DiffusionModel) else model).to(args.device).eval()
    if not hasattr(first_stage, "encode_latent"):
        print(f"cache_latents.py: error: {args.first_stage} holds a {type(model).__name__}, neither a first stage "
              "(autoencoder_kl, vq) nor a latent-diffusion model", file=sys.stderr)
        return 2
    datamodule = instantiate(compose_config(*parse(overrides)).data)
    try:
        words = write_splits(datamodule, Path(args.out), args.splits.split(","), args.maxcount,
                             lambda dataset: latent_samples(dataset, first_stage, args.flip, args.batch_size,
                                                            torch.device(args.device)))
    except ValueError as error:
        print(f"cache_latents.py: error: --splits {args.splits}: {error}", file=sys.stderr)
        return 2
    print("train on them with the recipe of this first stage and:\n  " + " ".join(words))
    return 0


if __name__ == "__main__":
    sys.exit(main())
