"""The command lines of the sampling scripts: the flags they share, CompVis's txt2img flags, and the one place
where an error becomes ``prog: error: ...`` and exit code 2 (the API raises; only scripts exit)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch

from pixelforge.diffusion.samplers import SAMPLERS
from pixelforge.inference.devices import PRECISIONS, best_device, half_dtype
from pixelforge.inference.text_to_image import (
    InferenceError,
    default_options,
    load_text_model,
    read_prompts,
    sampler_options,
)
from pixelforge.runs import load_run

DEFAULT_PROMPT = "a large red circle in the center"


@contextlib.contextmanager
def exit_on_error(prog: str) -> Iterator[None]:
    """Turn the errors of bad input (a run that is missing or unfit, a bad flag value) into ``prog: error: ...``
    and exit code 2, as argparse does."""
    try:
        yield
    except (InferenceError, FileNotFoundError, ValueError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def load_run_or_exit(ckpt: str, config: str | None, prog: str) -> tuple[Any, Any]:
    """``runs.load_run`` for a script: a missing, unfit or unreadable run is ``prog: error: ...`` and exit 2."""
    with exit_on_error(prog):
        return load_run(ckpt, config)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def unit_interval(text: str) -> float:
    """argparse type: a guidance rescale, a number in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1] (0: plain guidance, 0.7: Lin et al.), got {value}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every sampling script takes: which run, seed, precision, EMA weights and device."""
    parser.add_argument("--ckpt", required=True, help="a run directory or a checkpoint inside one")
    parser.add_argument("--config", help="config to build the model from (default: the run's configs/config.yaml)")
    parser.add_argument("--seed", type=int, default=42, help="seeds the generator that draws all noise")
    parser.add_argument("--precision", choices=PRECISIONS, default="full",
                        help="autocast: bf16 on the CPU, fp16 on GPUs; half: autocast with the weights in that "
                             "precision too (half their memory)")
    add_ema_argument(parser)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")


def add_ema_argument(parser: argparse.ArgumentParser) -> None:
    """``--use_ema`` (the default) / ``--no-use_ema`` or ``--no-ema``: sample with the EMA or the live weights."""
    parser.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True,
                        help="sample with the EMA weights (--no-use_ema: the live weights)")
    parser.add_argument("--no-ema", dest="use_ema", action="store_false", help="the same as --no-use_ema")


def device_of(args: argparse.Namespace) -> torch.device | None:
    """``--device`` as a torch device (None: the best available)."""
    return torch.device(args.device) if args.device else None


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
    parser.add_argument("--ddim_steps", type=positive_int,
                        help="sampling steps of any sampler (default: the model's, 50 for Stable Diffusion)")
    sampler = parser.add_mutually_exclusive_group()
    sampler.add_argument("--sampler", choices=sorted(SAMPLERS), default="dpmpp", help="diffusion sampler")
    sampler.add_argument("--plms", dest="sampler", action="store_const", const="plms",
                         help="CompVis's PLMS (pseudo linear multistep): the same as --sampler plms")
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
    parser.add_argument("--scale", type=float,
                        help="classifier-free guidance scale, 1: none (default: the model's, 7.5 for Stable Diffusion)")
    parser.add_argument("--guidance_rescale", type=unit_interval,
                        help="phi in [0, 1]: pull the guided prediction's std towards the conditional one's (Lin et "
                             "al. 2023; 0: plain guidance; default: the model's)")
    parser.add_argument("--sd_version", choices=["v1", "v2", "v2-v"],
                        help="the version of a Stable Diffusion single file (default: read from its keys; a 768-v "
                             "file needs v2-v)")
    parser.add_argument("--lora", help="a LoRA file (kohya format, as convert.py --lora_to writes) to merge in")
    parser.add_argument("--lora_scale", type=float, default=1.0, help="how much of the LoRA to add (1: all of it)")
    parser.add_argument("--unsafe", action="store_true",
                        help="load a .ckpt that pickles more than tensors (it can run code: trusted files only)")
    add_run_arguments(parser)
    return parser


def prompt_batches(args: argparse.Namespace) -> list[list[str]]:
    """Batches of ``n_samples``: --prompt repeated, or the non-empty lines of --from-file in turn (as CompVis)."""
    if args.from_file is None:
        return [[args.prompt] * args.n_samples]
    prompts = read_prompts(args.from_file)
    return [prompts[i:i + args.n_samples] for i in range(0, len(prompts), args.n_samples)]


def apply_lora(model: Any, path: str, scale: float) -> None:
    """Merge the LoRA file at ``path`` into the U-Net that samples (the EMA copy when the run keeps one) and the
    text tower."""
    from safetensors.torch import load_file

    from pixelforge.interop.lora import merge_kohya

    try:
        state = load_file(path)
    except (OSError, RuntimeError) as error:
        raise InferenceError(f"--lora {path}: {error}") from None
    try:
        merge_kohya(model, state, scale)
    except KeyError as error:
        raise InferenceError(f"--lora {path}: {str(error).strip(chr(39))}") from None


def load_model(args: argparse.Namespace) -> Any:
    """The model the flags name, with ``--ddim_steps``, ``--scale`` and ``--guidance_rescale`` filled in from it
    when left out."""
    device = device_of(args) or best_device()
    half = half_dtype(device) if args.precision == "half" else None
    # a LoRA file merges into float32 weights, which are then halved
    model = load_text_model(args.ckpt, args.config, device, args.C, args.f, args.sd_version, args.use_ema,
                            args.unsafe, dtype=None if args.lora else half)
    if args.lora:
        apply_lora(model, args.lora, args.lora_scale)
        if half is not None:
            model.weights_to(half)
    defaults = default_options(model)
    args.ddim_steps = defaults["steps"] if args.ddim_steps is None else args.ddim_steps
    args.scale = defaults["scale"] if args.scale is None else args.scale
    if args.guidance_rescale is None:
        args.guidance_rescale = defaults["guidance_rescale"]
    return model


def sampling_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler keywords of the txt2img flags."""
    return sampler_options(args.sampler, args.ddim_steps, args.scale, args.ddim_eta, args.use_ema,
                           args.guidance_rescale)


def sample_record(args: argparse.Namespace, options: dict[str, Any], height: int, width: int,
                  **extra: Any) -> dict[str, Any]:
    """What ``samples.jsonl`` says of every image besides its file and prompt."""
    return {"seed": args.seed, "sampler": options["sampler"], "steps": args.ddim_steps, "scale": args.scale,
            "guidance_rescale": args.guidance_rescale,
            "eta": options.get("eta"), "H": height, "W": width, "ckpt": str(args.ckpt), **extra}
