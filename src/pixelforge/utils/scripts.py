"""Helpers the scripts share: device and precision, run flags, CompVis's numbered outputs, text-to-image sampling.

``scripts/txt2img.py`` and ``scripts/img2img.py`` are one program with two kinds of input: both build their command
line with ``text_to_image_parser`` and sample and write through ``sample_to_outdir``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor
from tqdm import tqdm

from pixelforge.diffusion.samplers import SAMPLERS
from pixelforge.models.latent_diffusion import LatentDiffusion
from pixelforge.runs import load_run
from pixelforge.utils.images import grid, save_png, to_uint8

DEFAULT_PROMPT = "a large red circle in the center"
PLMS = "plms"  # CompVis's --plms; pixelforge has no PLMS sampler and runs DPM-Solver++ for it


# ---- any sampling script ----------------------------------------------------------------------------------
def best_device() -> torch.device:
    """CUDA, else Apple's MPS, else the CPU: the fastest device this machine offers."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` for ``--precision autocast`` (bf16 on the CPU, fp16 elsewhere), else none."""
    if precision != "autocast":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every sampling script takes: which run, seed, precision, EMA weights and device."""
    parser.add_argument("--ckpt", required=True, help="a run directory or a checkpoint inside one")
    parser.add_argument("--config", help="config to build the model from (default: the run's configs/config.yaml)")
    parser.add_argument("--seed", type=int, default=42, help="seeds the generator that draws all noise")
    parser.add_argument("--precision", choices=["full", "autocast"], default="full",
                        help="autocast: bf16 on the CPU, fp16 on GPUs")
    parser.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True,
                        help="sample with the EMA weights (--no-use_ema: the live weights)")
    parser.add_argument("--no-ema", dest="use_ema", action="store_false", help="the same as --no-use_ema")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")


def fail(prog: str, message: str) -> NoReturn:
    """Print ``prog: error: message`` and exit with 2, as argparse and ``load_run_or_exit`` do."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_run_or_exit(path: str | Path, config: str | Path | None, prog: str) -> tuple[Any, Any]:
    """``load_run`` for command-line scripts: a missing or unfit run prints ``prog: error: ...`` and exits with 2."""
    try:
        return load_run(path, config)
    except (FileNotFoundError, ValueError) as error:
        fail(prog, str(error))


def next_number(folder: Path, pattern: str) -> int:
    """One past the highest number in the names in ``folder`` that fully match ``pattern`` (one group), else 0."""
    numbers = [int(match[1]) for path in folder.iterdir() if (match := re.fullmatch(pattern, path.name))]
    return max(numbers, default=-1) + 1


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def load_image(path: str, height: int, width: int, mode: str, prog: str) -> torch.Tensor:
    """The image at ``path`` in PIL ``mode`` ("RGB" or "L") resized to ``height`` x ``width``: 1,C,H,W in [0, 1]."""
    try:
        with Image.open(path) as image:
            image = image.convert(mode).resize((width, height), Image.Resampling.LANCZOS)
    except (OSError, ValueError) as error:  # missing file, or data PIL cannot decode
        fail(prog, f"cannot read image {path!r}: {error}")
    return pil_to_tensor(image)[None].float() / 255


# ---- txt2img.py and img2img.py ----------------------------------------------------------------------------
def text_to_image_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """CompVis's txt2img flags with defaults for pixelforge's small models; img2img.py adds its image flags."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt to render")
    parser.add_argument("--from-file", help="a text file with one prompt a line, sampled instead of --prompt")
    parser.add_argument("--outdir", default=f"outputs/{prog.removesuffix('.py')}-samples",
                        help="samples/NNNNN.png, grid-NNNN.png, prompts.txt and samples.jsonl go here")
    parser.add_argument("--skip_grid", action="store_true", help="do not write a grid of all images")
    parser.add_argument("--skip_save", action="store_true", help="do not write the individual images")
    parser.add_argument("--ddim_steps", type=positive_int, default=20, help="sampling steps (of any sampler)")
    sampler = parser.add_mutually_exclusive_group()
    sampler.add_argument("--sampler", choices=sorted(SAMPLERS), default="dpmpp", help="diffusion sampler")
    sampler.add_argument("--plms", dest="sampler", action="store_const", const=PLMS,
                         help="CompVis's PLMS: pixelforge has none and runs DPM-Solver++ (dpmpp) instead")
    sampler.add_argument("--dpm_solver", dest="sampler", action="store_const", const="dpmpp",
                         help="DPM-Solver++ (2M): the same as --sampler dpmpp")
    parser.add_argument("--fixed_code", action="store_true", help="one starting noise for every batch")
    parser.add_argument("--ddim_eta", type=float, default=0.0, help="DDIM eta (0: deterministic); DDIM only")
    parser.add_argument("--n_iter", type=positive_int, default=2, help="how often to sample each batch")
    parser.add_argument("--H", type=positive_int, help="image height in pixels (default: the model's image size)")
    parser.add_argument("--W", type=positive_int, help="image width in pixels (default: the model's image size)")
    parser.add_argument("--C", type=positive_int, help="latent channels; must be the model's (default: it)")
    parser.add_argument("--f", type=positive_int, help="first-stage downsampling factor; must be the model's")
    parser.add_argument("--n_samples", type=positive_int, default=4,
                        help="batch size: copies of --prompt per batch, or prompts of --from-file per batch")
    parser.add_argument("--n_rows", type=positive_int, help="images per grid row (default: n_samples)")
    parser.add_argument("--scale", type=float, default=5.0, help="classifier-free guidance scale (1: none)")
    add_run_arguments(parser)
    return parser


def prompt_batches(args: argparse.Namespace, prog: str) -> list[list[str]]:
    """Batches of ``n_samples``: --prompt repeated, or the non-empty lines of --from-file in turn (as CompVis)."""
    if args.from_file is None:
        return [[args.prompt] * args.n_samples]
    try:
        lines = Path(args.from_file).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        fail(prog, f"--from-file {args.from_file}: {error}")
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        fail(prog, f"--from-file {args.from_file} holds no prompts; write one prompt a line")
    return [prompts[i:i + args.n_samples] for i in range(0, len(prompts), args.n_samples)]


def load_text_model(args: argparse.Namespace, prog: str) -> LatentDiffusion:
    """The run of --ckpt on --device, checked to be text-conditioned and to have the latents --C/--f name."""
    _, model = load_run_or_exit(args.ckpt, args.config, prog)
    if not (isinstance(model, LatentDiffusion) and model.text_conditioned):
        fail(prog, f"{args.ckpt} holds a {type(model).__name__}, not a text-conditioned model (a LatentDiffusion "
                   "with conditioning_key crossattn and a text encoder)")
    for flag, given, actual in (("--C", args.C, model.channels), ("--f", args.f, model.downsample_factor)):
        if given is not None and given != actual:
            fail(prog, f"{flag} {given} does not match the model, whose value is {actual}; leave {flag} out")
    return model.to(torch.device(args.device) if args.device else best_device())


def output_size(model: LatentDiffusion, args: argparse.Namespace, prog: str) -> tuple[int, int]:
    """(H, W) in pixels: --H/--W or the model's image size, checked against its first-stage and U-Net factors."""
    height = args.H if args.H is not None else model.image_size
    width = args.W if args.W is not None else model.image_size
    try:
        model.sample_shape(1, height, width)
    except ValueError as error:
        fail(prog, f"--H/--W: {error}")
    return height, width


def sampler_options(args: argparse.Namespace, prog: str) -> dict[str, Any]:
    """``LatentDiffusion.sample`` keywords for the sampler flags; --plms runs DPM-Solver++ with a note."""
    name = args.sampler
    if name == PLMS:
        print(f"{prog}: note: pixelforge has no PLMS sampler; --plms runs DPM-Solver++ (dpmpp), a multistep "
              "solver that needs no more steps", file=sys.stderr)
        name = "dpmpp"
    options = {"sampler": name, "steps": args.ddim_steps, "scale": args.scale, "use_ema": args.use_ema}
    if name == "ddim":
        options["eta"] = args.ddim_eta
    elif args.ddim_eta != 0:
        fail(prog, f"--ddim_eta {args.ddim_eta} applies to the DDIM sampler only, not {name}; pass --sampler ddim")
    return options


class SampleWriter:
    """CompVis's outputs: ``samples/NNNNN.png`` and ``grid-NNNN.png`` numbered on from what is there, plus records.

    Each image appends a line ``<file>\\t<prompt>`` to ``prompts.txt`` and a JSON object (its file, grid, prompt
    and ``record``: seed, sampler, ...) to ``samples.jsonl``; ``file`` is null with --skip_save, ``grid`` with
    --skip_grid.
    """

    def __init__(self, outdir: str, record: dict[str, Any], skip_save: bool, skip_grid: bool,
                 n_rows: int) -> None:
        self.outdir = Path(outdir)
        (self.outdir / "samples").mkdir(parents=True, exist_ok=True)
        self.number = next_number(self.outdir / "samples", r"(\d+)\.png")
        grid_number = next_number(self.outdir, r"grid-(\d+)\.png")
        self.grid_name = None if skip_grid else f"grid-{grid_number:04d}.png"
        self.record = record
        self.skip_save = skip_save
        self.n_rows = n_rows
        self.images: list[torch.Tensor] = []

    def add(self, images: torch.Tensor, prompts: Sequence[str]) -> None:
        """Write a batch of images in [-1, 1] (one per prompt) and their records; keep them for the grid."""
        records = []
        for image, prompt in zip(to_uint8(images), prompts, strict=True):
            name = None
            if not self.skip_save:
                name = f"samples/{self.number:05d}.png"
                save_png(image, self.outdir / name)
                self.number += 1
            records.append({"file": name, "grid": self.grid_name, "prompt": prompt, **self.record})
        with (self.outdir / "prompts.txt").open("a") as lines, (self.outdir / "samples.jsonl").open("a") as jsonl:
            for record in records:
                lines.write(f"{record['file'] or '-'}\t{record['prompt']}\n")
                jsonl.write(json.dumps(record) + "\n")
        if self.grid_name is not None:
            self.images.append(images.float().cpu())

    def finish(self) -> None:
        """Write the grid of every image added and say where the outputs are."""
        if self.grid_name is not None:
            save_png(grid(torch.cat(self.images), nrow=self.n_rows), self.outdir / self.grid_name)
        print(f"Your samples are ready and waiting for you here: {self.outdir}")


@torch.no_grad()
def sample_to_outdir(model: LatentDiffusion, args: argparse.Namespace, prog: str, batches: list[list[str]],
                     size: tuple[int, int], record: dict[str, Any] | None = None, strength: float | None = None,
                     **inputs: torch.Tensor) -> None:
    """Sample every prompt batch --n_iter times and write the images and their records to --outdir.

    ``inputs`` are further ``model.sample`` tensors with a batch of one (img2img's ``init_images`` and
    ``keep_mask``, which go with ``strength``), repeated to each batch's size. One generator seeded with --seed
    draws all noise; with --fixed_code one starting noise serves every batch, so equal prompts give equal images.
    """
    options = sampler_options(args, prog)
    height, width = size
    writer = SampleWriter(args.outdir, {"seed": args.seed, "sampler": options["sampler"], "steps": args.ddim_steps,
                                        "scale": args.scale, "eta": options.get("eta"), "H": height, "W": width,
                                        "ckpt": str(args.ckpt), **(record or {})},
                          args.skip_save, args.skip_grid, args.n_rows or args.n_samples)
    device = model.device
    generator = torch.Generator(device).manual_seed(args.seed)
    start_code = None
    if args.fixed_code:
        start_code = torch.randn(model.sample_shape(args.n_samples, height, width), generator=generator,
                                 device=device)
    with autocast(device, args.precision):
        for _ in tqdm(range(args.n_iter), desc="Sampling"):
            for prompts in tqdm(batches, desc="data", leave=False):
                n = len(prompts)
                repeated = {key: value.to(device).expand(n, -1, -1, -1) for key, value in inputs.items()}
                noise = start_code[:n] if start_code is not None else None
                try:
                    images = model.sample(prompts=prompts, noise=noise, generator=generator, height=height,
                                          width=width, strength=strength, **repeated,
                                          **options)
                except ValueError as error:  # settings the model refuses, e.g. more steps than its schedule has
                    fail(prog, str(error))
                writer.add(images, prompts)
    writer.finish()
