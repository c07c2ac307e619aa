"""Image to image and inpainting with a trained text-to-image latent diffusion run (CompVis's img2img flags).

    python scripts/img2img.py --ckpt logs/<ldm run> --init-img shape.png --strength 0.6 \\
        --prompt "a large green triangle in the center"
    python scripts/img2img.py --ckpt logs/<ldm run> --init-img shape.png --mask mask.png --strength 1 \\
        --prompt "a small red circle in the top left"

The init image is resized to --H x --W (default: the model's image size) and re-noised part way: --strength 1
replaces it entirely, small values keep it. --mask (white = repaint, black = keep; grey blends) inpaints by
blending the kept latents back in after every sampler step. All txt2img.py flags apply; outputs as there, with the
init image, strength and mask in each record.
"""

from __future__ import annotations

import sys

from pixelforge.inference import SampleWriter, load_image, output_size, sample_batches
from pixelforge.inference.arguments import (
    exit_on_error,
    load_model,
    prompt_batches,
    sample_record,
    sampling_flags,
    text_to_image_parser,
)

PROG = "img2img.py"


def main(argv: list[str] | None = None) -> int:
    parser = text_to_image_parser(PROG, __doc__)
    parser.add_argument("--init-img", required=True, help="path to the image to start from")
    parser.add_argument("--strength", type=float, default=0.75,
                        help="in (0, 1]: how far the init image is re-noised (1: entirely)")
    parser.add_argument("--mask", help="inpainting mask image: white = repaint, black = keep the init image")
    args = parser.parse_args(argv)
    if not 0 < args.strength <= 1:
        parser.error(f"--strength {args.strength} must be in (0, 1] (1 replaces the init image entirely)")
    with exit_on_error(PROG):
        batches = prompt_batches(args)
        model = load_model(args)
        height, width = output_size(model, args.H, args.W)
        mode = "L" if model.first_stage.in_channels == 1 else "RGB"
        init_image = load_image(args.init_img, height, width, mode) * 2 - 1
        mask = None if args.mask is None else load_image(args.mask, height, width, "L")
        options = sampling_flags(args)
        extra = {"init_img": args.init_img, "strength": args.strength, "mask": args.mask}
        writer = SampleWriter(args.outdir, sample_record(args, options, height, width, **extra), args.skip_save,
                              args.skip_grid, args.n_rows or args.n_samples)
        sample_batches(model, batches, writer, seed=args.seed, n_iter=args.n_iter, fixed_code=args.fixed_code,
                       height=height, width=width, precision=args.precision, init_image=init_image,
                       strength=args.strength, mask=mask, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
