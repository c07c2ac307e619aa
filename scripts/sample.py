"""Sample any trained generative run (DDPM, GAN, VAE prior): individual PNGs plus a grid.

    python scripts/sample.py --ckpt logs/<ddpm run> --n_samples 64 --sampler dpmpp --steps 20 --scale 3
    python scripts/sample.py --ckpt logs/<gan or vae run> --n_samples 64

Diffusion options (--sampler --steps --eta --scale --guidance_rescale) apply to diffusion runs only.
"""

from __future__ import annotations

import argparse
import sys

import torch
from tqdm import tqdm

from pixelforge.diffusion.samplers import SAMPLERS
from pixelforge.inference import SampleWriter, autocast, best_device, guidance_defaults
from pixelforge.inference.arguments import add_run_arguments, device_of, load_run_or_exit, unit_interval
from pixelforge.protocols import Diffuses, Generates, KeepsEMA


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--n_samples", type=int, default=16, help="images to generate (per class with all classes)")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="dpmpp", help="diffusion sampler")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (diffusion)")
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta (0: deterministic)")
    parser.add_argument("--scale", type=float, default=None,
                        help="classifier-free guidance scale, 1: none (default: a guided model's log_guidance_scale, "
                             "the scale its image logs and evaluate.py use; 1 for an unguided one)")
    parser.add_argument("--guidance_rescale", type=unit_interval, default=None,
                        help="phi in [0, 1]: guided prediction's std pulled towards the conditional one's (Lin et al.; "
                             "default: the model's log_guidance_rescale)")
    parser.add_argument("--class_label", default=None,
                        help="class to generate (int), or key=value,... for several label keys; "
                             "omitted for a conditional model: one row per class")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--outdir", default="outputs/samples")
    return parser.parse_args(argv)


def requested_labels(model, class_label: str | None, n: int, seed: int) -> tuple[torch.Tensor | None, int]:
    """Label rows to generate and the grid's row length: a given class, every class in rows, or none."""
    keys = list(getattr(model, "cond_keys", []))
    if not keys:
        if class_label is not None:
            raise SystemExit(f"--class_label {class_label}: this model is unconditional")
        return None, 0
    counts = model.class_counts
    if class_label is None:
        if len(keys) == 1:
            return torch.arange(counts[0]).repeat_interleave(n), n
        generator = torch.Generator().manual_seed(seed)
        return torch.stack([torch.randint(c, (n,), generator=generator) for c in counts], 1), 0
    values = {}
    if len(keys) == 1 and "=" not in class_label:
        values[keys[0]] = class_label
    else:
        for part in class_label.split(","):
            key, _, value = part.partition("=")
            if key not in keys:
                raise SystemExit(f"--class_label: unknown key {key!r}; this model is conditioned on {keys}")
            values[key] = value
    missing = [k for k in keys if k not in values]
    if missing:
        raise SystemExit(f"--class_label: give a value for each of {keys} (missing {missing})")
    row = []
    for key, count in zip(keys, counts, strict=True):
        if not values[key].isdigit() or int(values[key]) >= count:
            raise SystemExit(f"--class_label: {key}={values[key]!r} is not a class index in 0..{count - 1}")
        row.append(int(values[key]))
    labels = torch.tensor(row).expand(n, -1)
    return (labels[:, 0] if len(keys) == 1 else labels), 0


def sampling_options(model, args: argparse.Namespace) -> dict:
    """The keyword arguments of ``model.sample`` that this run's family takes (diffusion options, EMA)."""
    options: dict = {}
    if isinstance(model, Diffuses):
        scale, rescale = guidance_defaults(model)
        options = {"sampler": args.sampler, "steps": args.steps,
                   "scale": scale if args.scale is None else args.scale,
                   "guidance_rescale": rescale if args.guidance_rescale is None else args.guidance_rescale}
        if args.eta is not None:
            options["eta"] = args.eta
    elif args.scale not in (None, 1.0) or args.guidance_rescale:
        raise SystemExit(f"--scale {args.scale} / --guidance_rescale {args.guidance_rescale}: guidance applies to "
                         f"diffusion runs, not a {type(model).__name__}")
    if isinstance(model, KeepsEMA):
        options["use_ema"] = args.use_ema
    return options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg, model = load_run_or_exit(args.ckpt, args.config, "sample.py")
    if not isinstance(model, Generates):
        print(f"sample.py: error: {args.ckpt} holds a {type(model).__name__}, which cannot generate images",
              file=sys.stderr)
        return 2
    device = device_of(args) or best_device()
    model = model.to(device)
    labels, row = requested_labels(model, args.class_label, args.n_samples, args.seed)
    total = len(labels) if labels is not None else args.n_samples
    generator = torch.Generator(device).manual_seed(args.seed)
    sample_kwargs = sampling_options(model, args)
    writer = SampleWriter(args.outdir, {"ckpt": str(args.ckpt), "seed": args.seed, **sample_kwargs},
                          n_rows=row or None)
    with autocast(device, args.precision), tqdm(total=total, desc="sampling", unit="img") as bar:
        for start in range(0, total, args.batch_size):
            count = min(args.batch_size, total - start)
            chunk = labels[start:start + count].to(device) if labels is not None else None
            images = model.sample(count, labels=chunk, generator=generator, **sample_kwargs).float().cpu()
            extras = None if chunk is None else [{"label": label} for label in chunk.tolist()]
            writer.add(images, [None] * count, extras)
            bar.update(count)
    writer.finish()
    return 0

if __name__ == "__main__":
    sys.exit(main())
