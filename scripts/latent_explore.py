"""Explore the latent space of a trained autoencoder or VAE run; writes PNGs and a JSON summary.

    python scripts/latent_explore.py --ckpt logs/<ae or vae run> --attribute label=1
    python scripts/latent_explore.py --ckpt logs/<vae_shapes run> --attribute color=red shape=circle

Writes to ``--outdir`` (default: ``<run>/latent_explore``): ``scatter.png`` (test latents, PCA when the latent has
more than two dimensions, coloured by ``--color_by``), ``prior_samples.png`` (a VAE's N(0, I); for a plain
autoencoder a Gaussian fitted to the test latents), ``interpolations.png`` (one strip per pair of test images),
``attribute_<key>_<value>.png`` (test images with the attribute vector added at factors -2..+2, one row each)
and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from matplotlib.figure import Figure

from pixelforge.data.shapes import COLORS, POSITIONS, SHAPES, SIZES
from pixelforge.inference.arguments import load_run_or_exit
from pixelforge.inference.latent import attribute_vector, encode_dataset, fit_gaussian, interpolate, project_2d
from pixelforge.protocols import Encodes, Generates
from pixelforge.utils.images import grid, save_png

LABEL_KEYS = ("label", "shape", "color", "size", "position")
CLASS_NAMES = {"shape": SHAPES, "color": COLORS, "size": SIZES, "position": POSITIONS}
FACTORS = (-2.0, -1.0, 0.0, 1.0, 2.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="an autoencoder/VAE run directory or a checkpoint inside one")
    parser.add_argument("--config", help="config to build the model from (default: the run's)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--color_by", help="label key colouring the scatter (default: label, or shape)")
    parser.add_argument("--attribute", nargs="*", help="KEY=VALUE attributes, e.g. label=1 or color=red "
                        "(default: label=1, or color=red shape=circle on shapes)")
    parser.add_argument("--n_samples", type=int, default=64, help="prior samples in the grid")
    parser.add_argument("--pairs", type=int, default=8, help="interpolation strips")
    parser.add_argument("--steps", type=int, default=10, help="images per interpolation strip")
    parser.add_argument("--n_rows", type=int, default=8, help="test images per attribute-vector picture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--outdir", help="output folder (default: <run>/latent_explore)")
    return parser.parse_args(argv)


def class_index(key: str, value: str) -> int:
    """A class given by index (``3``) or, for the shapes' attributes, by name (``red``)."""
    if value.isdigit():
        return int(value)
    names = CLASS_NAMES.get(key, ())
    if value not in names:
        valid = ", ".join(names) if names else "a class index"
        raise SystemExit(f"--attribute {key}={value}: unknown value; valid: {valid}")
    return names.index(value)


def parse_attributes(specs: list[str], labels: dict[str, torch.Tensor]) -> list[tuple[str, str, int]]:
    """``KEY=VALUE`` strings as (key, value, class index), checked against the dataset's label keys."""
    attributes = []
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or key not in labels:
            raise SystemExit(f"--attribute {spec!r}: expected KEY=VALUE with KEY one of {sorted(labels)}")
        attributes.append((key, value, class_index(key, value)))
    return attributes


def plot_scatter(points: torch.Tensor, colours: torch.Tensor, key: str, explained: list[float], pca: bool,
                 path: Path) -> None:
    """The 2-D latent scatter, one colour per class, with a legend naming the classes."""
    fig = Figure(figsize=(6.5, 6), dpi=120)
    ax = fig.subplots()
    names = CLASS_NAMES.get(key)
    for cls in colours.unique().tolist():
        mask = colours == cls
        label = names[cls] if names else str(cls)
        ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.7, label=label)
    axis = "PC" if pca else "z"
    ax.set_xlabel(f"{axis}1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"{axis}2 ({explained[1]:.0%} of variance)")
    ax.set_title(f"test latents by {key}" + (" (PCA)" if pca else ""))
    ax.legend(markerscale=3, fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg, model = load_run_or_exit(args.ckpt, args.config, "latent_explore.py")
    if not isinstance(model, Encodes):
        print(f"latent_explore.py: error: {args.ckpt} holds a {type(model).__name__}; latent exploration needs an "
              "autoencoder or VAE run (encode/decode)", file=sys.stderr)
        return 2
    model = model.to(args.device)
    dataset = instantiate(cfg.data).build(args.split)
    keys = [key for key in LABEL_KEYS if key in dataset[0]]
    z, labels = encode_dataset(model, dataset, keys, args.batch_size, args.device)
    color_by = args.color_by or keys[0]
    if color_by not in labels:
        raise SystemExit(f"--color_by {color_by}: not a label of this dataset; valid: {keys}")
    default = ["label=1"] if "label" in labels else ["color=red", "shape=circle"]
    attributes = parse_attributes(args.attribute or default, labels)
    outdir = Path(args.outdir) if args.outdir else Path(cfg.run_dir) / "latent_explore"
    outdir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return torch.cat([model.decode(chunk.to(args.device)).cpu() for chunk in latents.split(args.batch_size)])

    points, explained = project_2d(z)
    pca = z[0].numel() > 2
    plot_scatter(points, labels[color_by], color_by, explained, pca, outdir / "scatter.png")

    if isinstance(model, Generates):
        prior = "N(0, I)"
        samples = model.sample(args.n_samples, generator=torch.Generator(args.device).manual_seed(args.seed)).cpu()
    else:
        prior = "Gaussian fitted to the test latents"
        torch.manual_seed(args.seed)
        samples = decode(fit_gaussian(z).sample((args.n_samples,)).float().view(-1, *z.shape[1:]))
    save_png(grid(samples), outdir / "prior_samples.png")

    pairs = torch.randperm(len(z), generator=generator)[: 2 * args.pairs].view(-1, 2)
    strips = [decode(interpolate(z[a], z[b], args.steps)) for a, b in pairs.tolist()]
    save_png(grid(torch.cat(strips), nrow=args.steps), outdir / "interpolations.png")

    images = torch.stack([dataset[i]["image"] for i in range(args.n_rows)])
    factors = torch.tensor(FACTORS)
    summary_attributes = []
    for key, value, index in attributes:
        vector = attribute_vector(z, labels[key] == index)
        shifted = z[: args.n_rows, None] + factors.view(1, -1, *([1] * vector.dim())) * vector
        pictures = torch.cat([images[:, None], decode(shifted.flatten(0, 1)).view(args.n_rows, len(FACTORS),
                                                                                  *images.shape[1:])], 1)
        name = f"attribute_{key}_{value}.png"
        save_png(grid(pictures.flatten(0, 1), nrow=len(FACTORS) + 1), outdir / name)
        summary_attributes.append({"attribute": f"{key}={value}", "count": int((labels[key] == index).sum()),
                                   "vector_norm": vector.norm().item(), "file": name})

    summary = {
        "ckpt": str(args.ckpt), "split": args.split, "n": len(z), "latent_shape": list(z.shape[1:]),
        "projection": "pca" if pca else "identity", "explained_variance": explained, "color_by": color_by,
        "prior": prior, "attributes": summary_attributes, "factors": list(FACTORS),
        "files": ["scatter.png", "prior_samples.png", "interpolations.png", *(a["file"] for a in summary_attributes)],
    }
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {', '.join(summary['files'])} and summary.json to {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
