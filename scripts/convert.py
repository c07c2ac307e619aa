"""Convert Stable Diffusion weights: a CompVis / Stability single file (.ckpt or .safetensors), a diffusers folder,
or a pixelforge run of Stable Diffusion's architecture (a fine-tuned SD) into a CompVis-layout .safetensors file or
a diffusers folder, read strictly and written with the U-Net's EMA weights when there are any (--no-ema: the live
ones).

    python scripts/convert.py --ckpt models/ldm/stable-diffusion-v1/model.ckpt --to model.safetensors
    python scripts/convert.py --ckpt logs/<sd_finetune run> --to finetuned.safetensors
    python scripts/convert.py --ckpt logs/<sd_lora run> --lora_to adapter.safetensors   # the adapters alone
    python scripts/convert.py --ckpt model.safetensors --diffusers_to sd-v1-5/   # diffusers' from_pretrained reads it

A .ckpt that pickles more than tensors (old CompVis files pickle Lightning callbacks) needs --unsafe: a pickle can
run any code, so convert only files from a source you trust, once, and keep the .safetensors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pixelforge.inference.arguments import exit_on_error
from pixelforge.inference.text_to_image import is_single_file
from pixelforge.interop import stable_diffusion
from pixelforge.interop.diffusers_folder import is_diffusers_folder
from pixelforge.interop.lora import kohya_state_dict
from pixelforge.runs import load_run

PROG = "convert.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a Stable Diffusion single file, or a pixelforge run")
    outputs = parser.add_mutually_exclusive_group(required=True)
    outputs.add_argument("--to", help="the .safetensors file to write (the whole model, CompVis layout)")
    outputs.add_argument("--lora_to", help="the .safetensors file of a LoRA run's adapters (kohya format)")
    outputs.add_argument("--diffusers_to", help="the diffusers pipeline folder to write")
    parser.add_argument("--sd_version", choices=sorted(stable_diffusion.VERSIONS),
                        help="the version of a single file (default: read from its keys)")
    parser.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True,
                        help="write the EMA weights of the U-Net when there are any")
    parser.add_argument("--no-ema", dest="use_ema", action="store_false", help="the same as --no-use_ema")
    parser.add_argument("--unsafe", action="store_true", help="read a .ckpt that pickles more than tensors")
    args = parser.parse_args(argv)
    output = args.to or args.lora_to
    if output is not None and not output.endswith(".safetensors"):
        parser.error(f"{'--to' if args.to else '--lora_to'} {output}: the output is a .safetensors file")
    return args


def write_adapters(model, path: Path) -> Path:
    """The LoRA adapters of ``model`` (U-Net and text tower) as a kohya-format safetensors file."""
    from safetensors.torch import save_file

    state = kohya_state_dict(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with exit_on_error(PROG):
        if is_single_file(args.ckpt) or is_diffusers_folder(args.ckpt):
            model = stable_diffusion.load(args.ckpt, args.sd_version, use_ema=args.use_ema, unsafe=args.unsafe)
        else:
            _, model = load_run(args.ckpt)
        if args.lora_to:
            path = write_adapters(model, Path(args.lora_to))
        elif args.diffusers_to:
            path = stable_diffusion.save_folder(model, args.diffusers_to)
        else:
            path = stable_diffusion.save(model, args.to, use_ema=args.use_ema)
    print(f"{PROG}: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
