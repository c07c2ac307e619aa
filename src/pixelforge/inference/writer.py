"""CompVis's output folder: ``samples/NNNNN.png`` and ``grid-NNNN.png`` numbered on from what is there, plus one
record per image in ``prompts.txt`` and ``samples.jsonl``. Every sampling script writes through it."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pixelforge.utils.images import grid, save_png, to_uint8


def next_number(folder: Path, pattern: str) -> int:
    """One past the highest number in the names in ``folder`` that fully match ``pattern`` (one group), else 0."""
    numbers = [int(match[1]) for path in folder.iterdir() if (match := re.fullmatch(pattern, path.name))]
    return max(numbers, default=-1) + 1


class SampleWriter:
    """Writes images into ``outdir`` as CompVis's scripts do.

    Each image appends a line ``<file>\\t<prompt>`` to ``prompts.txt`` and a JSON object (its file, grid, prompt
    and ``record``: seed, sampler, ...) to ``samples.jsonl``; ``file`` is null with ``skip_save``, ``grid`` with
    ``skip_grid``. The grid of everything added (``n_rows`` a row; None: about square) is written by ``finish``.
    """

    def __init__(self, outdir: str | Path, record: dict[str, Any], skip_save: bool = False,
                 skip_grid: bool = False, n_rows: int | None = None) -> None:
        self.outdir = Path(outdir)
        (self.outdir / "samples").mkdir(parents=True, exist_ok=True)
        self.number = next_number(self.outdir / "samples", r"(\d+)\.png")
        grid_number = next_number(self.outdir, r"grid-(\d+)\.png")
        self.grid_name = None if skip_grid else f"grid-{grid_number:04d}.png"
        self.record = record
        self.skip_save = skip_save
        self.n_rows = n_rows
        self.images: list[torch.Tensor] = []

    def add(self, images: torch.Tensor, prompts: Sequence[str | None],
            extras: Sequence[dict[str, Any]] | None = None) -> None:
        """Write a batch of images in [-1, 1] (one prompt, or None, each) and their records, each with its entry of
        ``extras`` (e.g. a class label); keep the images for the grid."""
        records = []
        extras = extras if extras is not None else [{}] * len(prompts)
        for image, prompt, extra in zip(to_uint8(images), prompts, extras, strict=True):
            name = None
            if not self.skip_save:
                name = f"samples/{self.number:05d}.png"
                save_png(image, self.outdir / name)
                self.number += 1
            records.append({"file": name, "grid": self.grid_name, "prompt": prompt, **self.record, **extra})
        with (self.outdir / "prompts.txt").open("a") as lines, (self.outdir / "samples.jsonl").open("a") as jsonl:
            for record in records:
                lines.write(f"{record['file'] or '-'}\t{record['prompt'] or ''}\n")
                jsonl.write(json.dumps(record) + "\n")
        if self.grid_name is not None:
            self.images.append(images.float().cpu())

    def finish(self) -> Path | None:
        """Write the grid of every image added, say where the outputs are, and return the grid's path."""
        path = None
        if self.grid_name is not None and self.images:
            path = self.outdir / self.grid_name
            save_png(grid(torch.cat(self.images), nrow=self.n_rows), path)
        print(f"Your samples are ready and waiting for you here: {self.outdir}")
        return path
