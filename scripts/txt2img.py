"""Text to image with a trained latent diffusion run, with CompVis/stable-diffusion's flags and output layout.

    python scripts/txt2img.py --ckpt logs/<ldm run> --prompt "a small blue square in the top left"
    python scripts/txt2img.py --ckpt logs/<ldm run> --from-file prompts.txt --n_samples 8 --n_iter 1 \\
        --sampler ddim --ddim_steps 50 --ddim_eta 0 --scale 7.5 --fixed_code

Writes outdir/samples/NNNNN.png and outdir/grid-NNNN.png, numbered on from what is already there, and appends one
line per image to outdir/prompts.txt (file, tab, prompt) and outdir/samples.jsonl (file, grid, prompt, seed,
sampler, steps, scale, eta, H, W, ckpt). --ddim_steps counts the steps of any sampler; --plms (CompVis) runs
DPM-Solver++ with a note, as pixelforge has no PLMS sampler. No safety checker, no watermark.
"""

from __future__ import annotations

import sys

from pixelforge.utils.scripts import (
    load_text_model,
    output_size,
    prompt_batches,
    sample_to_outdir,
    text_to_image_parser,
)

PROG = "txt2img.py"


def main(argv: list[str] | None = None) -> int:
    args = text_to_image_parser(PROG, __doc__).parse_args(argv)
    batches = prompt_batches(args, PROG)
    model = load_text_model(args, PROG)
    sample_to_outdir(model, args, PROG, batches, output_size(model, args, PROG))
    return 0


if __name__ == "__main__":
    sys.exit(main())
