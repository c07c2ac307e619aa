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

from pixelforge.utils.scripts import (
    load_image,
    load_text_model,
    output_size,
    prompt_batches,
    sample_to_outdir,
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
    batches = prompt_batches(args, PROG)
    model = load_text_model(args, PROG)
    height, width = output_size(model, args, PROG)
    mode = "L" if model.first_stage.in_channels == 1 else "RGB"
    inputs = {"init_images": load_image(args.init_img, height, width, mode, PROG) * 2 - 1}
    if args.mask is not None:
        inputs["keep_mask"] = 1 - load_image(args.mask, height, width, "L", PROG)
    record = {"init_img": args.init_img, "strength": args.strength, "mask": args.mask}
    sample_to_outdir(model, args, PROG, batches, (height, width), record, strength=args.strength, **inputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
