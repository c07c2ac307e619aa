"""Text to image with a trained latent diffusion run or Stable Diffusion's released weights, with
CompVis/stable-diffusion's flags and output layout.

    python scripts/txt2img.py --ckpt logs/<ldm run> --prompt "a small blue square in the top left"
    python scripts/txt2img.py --prompt "a photograph of an astronaut riding a horse" --plms \\
        --ckpt models/ldm/stable-diffusion-v1/model.ckpt
    python scripts/txt2img.py --ckpt logs/<ldm run> --from-file prompts.txt --n_samples 8 --n_iter 1 \\
        --sampler ddim --ddim_steps 50 --ddim_eta 0 --scale 7.5 --fixed_code

Writes outdir/samples/NNNNN.png and outdir/grid-NNNN.png, numbered on from what is already there, and appends one
line per image to outdir/prompts.txt (file, tab, prompt) and outdir/samples.jsonl (file, grid, prompt, seed,
sampler, steps, scale, eta, H, W, ckpt). --ddim_steps counts the steps of any sampler; --plms is CompVis's PLMS
sampler. No safety checker, no watermark.
"""

from __future__ import annotations

import sys

from pixelforge.inference import SampleWriter, output_size, sample_batches
from pixelforge.inference.arguments import (
    exit_on_error,
    load_model,
    prompt_batches,
    sample_record,
    sampling_flags,
    text_to_image_parser,
)

PROG = "txt2img.py"


def main(argv: list[str] | None = None) -> int:
    args = text_to_image_parser(PROG, __doc__).parse_args(argv)
    with exit_on_error(PROG):
        batches = prompt_batches(args)
        model = load_model(args)
        height, width = output_size(model, args.H, args.W)
        options = sampling_flags(args)
        writer = SampleWriter(args.outdir, sample_record(args, options, height, width), args.skip_save, args.skip_grid,
                              args.n_rows or args.n_samples)
        sample_batches(model, batches, writer, seed=args.seed, n_iter=args.n_iter, fixed_code=args.fixed_code,
                       height=height, width=width, precision=args.precision, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
