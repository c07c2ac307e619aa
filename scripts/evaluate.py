"""Evaluate a trained run with the metrics that fit its family; prints a Markdown table and writes JSON.

Classifiers: accuracy on a split. CLIP runs: zero-shot accuracy per target from their prompts (confusion matrices as
PNGs beside ``--out``) and image <-> text retrieval recall of the split's captions. Autoencoders: MSE/PSNR/SSIM of
reconstructions (a denoising autoencoder also on corrupted inputs, beside the corrupted inputs' own scores); VAEs
add ELBO, KL and the importance-sampled negative log-likelihood in nats and bits/dim. Generative runs (anything with
``sample``: DDPM, GAN, VAE prior): FID/KID on the features of a classifier this codebase trained on the same data,
conditional accuracy, and seconds per image, for each ``--sampler NAME:STEPS`` and ``--scale`` given (diffusion) or
once (other generators). Text-to-image runs are prompted with the split's captions and judged per attribute by the
classifier (on the shapes ``heldout`` split: attribute combinations never seen in training); on the shapes set also
by shape fidelity (``shape_fit``: the share of samples whose foreground fits an ideal render of the captioned shape,
size and place with IoU >= 0.85; a grid of the worst fits is written beside ``--out``, and one of the samples the
classifier read otherwise than asked, with what it read).

    python scripts/evaluate.py --ckpt logs/<ddpm run> --classifier logs/<classifier run> \\
        --sampler dpmpp:20 ddim:50 ddpm:1000 --scale 3 --n_samples 1000 --out results/ddpm.json
    python scripts/evaluate.py --ckpt logs/<ldm run> --classifier logs/<classifier_cnn_shapes run> \
        --split heldout --sampler dpmpp:20 --scale 1 3 5 7.5 --n_samples 500
    python scripts/evaluate.py --ckpt logs/<clip_shapes run> --split heldout --out results/clip_shapes.json
    python scripts/evaluate.py --ckpt logs/<ldm run> --classifier logs/<classifier run> --clip logs/<clip run> \
        --split heldout --scale 1 3 5 7.5        # CLIP score beside the classifier's accuracy
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from pixelforge.inference import guidance_defaults
from pixelforge.inference.arguments import add_ema_argument, load_run_or_exit, unit_interval
from pixelforge.metrics.clip import evaluate_clip
from pixelforge.metrics.features import build_feature_extractor
from pixelforge.metrics.generation import evaluate_samples
from pixelforge.metrics.likelihood import evaluate_likelihood
from pixelforge.metrics.reconstruction import evaluate_reconstructions
from pixelforge.protocols import AlignsText, Classifies, Diffuses, Generates, Reconstructs, ScoresLikelihood
from pixelforge.utils.plots import matrix_figure
from pixelforge.utils.tables import markdown, report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="run directory or checkpoint to evaluate")
    parser.add_argument("--config", help="config to build the model from (default: the run's)")
    parser.add_argument("--split", default="test", help="data split to compare with (default: test)")
    parser.add_argument("--classifier", help="classifier run whose features define FID/KID and judge labels")
    parser.add_argument("--features", choices=["classifier", "inception"], default="classifier")
    parser.add_argument("--clip", help="CLIP run that also judges text-to-image samples: CLIP score and FID on "
                                       "its image embeddings")
    parser.add_argument("--sampler", nargs="*", default=["dpmpp:20"], help="NAME:STEPS for diffusion models")
    parser.add_argument("--scale", type=float, nargs="+",
                        help="classifier-free guidance scale(s): one row per sampler and scale (default: a guided "
                             "model's log_guidance_scale, the scale txt2img.py samples at; 1 for an unguided one)")
    parser.add_argument("--guidance_rescale", type=unit_interval, nargs="+",
                        help="guidance rescale phi(s) in [0, 1] (Lin et al. 2023), one row each (default: the "
                             "model's log_guidance_rescale)")
    add_ema_argument(parser)  # diffusion runs: the EMA (default) or the live U-Net
    parser.add_argument("--n_samples", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--k", type=int, default=256, help="importance samples for a VAE's log-likelihood")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="JSON file for the results (a .md table is written beside it)")
    return parser.parse_args(argv)


@torch.no_grad()
def classifier_rows(model, dataset, batch_size: int, device: str) -> list[dict]:
    """Top-1 accuracy per target of an ``ImageClassifier`` on ``dataset``."""
    correct: dict[str, int] = {}
    for batch in DataLoader(dataset, batch_size=batch_size):
        for key, logits in model(batch["image"].to(device)).items():
            correct[key] = correct.get(key, 0) + int((logits.argmax(1).cpu() == batch[key]).sum())
    return [{"target": key, "accuracy": hits / len(dataset)} for key, hits in correct.items()]


def generative_rows(args: argparse.Namespace, model, dataset, key: str) -> list[dict]:
    """One row per sampler setting: FID, KID, conditional accuracy and seconds per image."""
    if args.features == "classifier" and not args.classifier:
        raise SystemExit("evaluate.py: error: --classifier RUN is needed for FID on project features")
    extractor = build_feature_extractor(args.features, args.classifier).to(args.device)
    clip = load_clip(args.clip, args.device) if args.clip else None
    scale, rescale = guidance_defaults(model)
    scales, rescales = args.scale or [scale], args.guidance_rescale or [rescale]
    settings = itertools.product(args.sampler, scales, rescales) if isinstance(model, Diffuses) else [None]
    rows = []
    for setting in settings:
        kwargs: dict = {}
        row: dict = {}
        tag = ""
        if setting is not None:
            (name, _, steps), scale, rescale = setting[0].partition(":"), setting[1], setting[2]
            kwargs = {"sampler": name, "steps": int(steps) if steps else None, "scale": scale,
                      "guidance_rescale": rescale, "use_ema": args.use_ema}
            row = {"sampler": name, "steps": kwargs["steps"], "scale": scale, "guidance_rescale": rescale,
                   "ema": args.use_ema}
            tag = (f"_{name}{steps}_scale{scale:g}" + (f"_rescale{rescale:g}" if rescale else "")
                   + ("" if args.use_ema else "_live"))
        worst, misread = (Path(args.out).with_name(f"{Path(args.out).stem}_{kind}{tag}.png") if args.out else None
                          for kind in ("worst", "misread"))
        if misread is not None:
            misread.unlink(missing_ok=True)  # an earlier evaluation's grid would claim misreads this one lacks
        start = time.perf_counter()
        results = evaluate_samples(model, extractor, dataset, key, args.n_samples, args.batch_size, seed=args.seed,
                                   clip=clip, worst_path=worst, misread_path=misread, **kwargs)
        if worst is not None and "shape_fit" in results:
            print(f"evaluate.py: wrote {worst} (the worst-fitting samples)")
        if misread is not None and misread.exists():
            print(f"evaluate.py: wrote {misread} (samples the classifier read otherwise than asked)")
        row.update(results)
        row["sec_per_image"] = (time.perf_counter() - start) / args.n_samples
        print(markdown([row]).splitlines()[-1], flush=True)
        rows.append(row)
    return rows


def load_clip(path: str, device: str):
    """The CLIP run that judges samples (``--clip``)."""
    _, clip = load_run_or_exit(path, None, "evaluate.py")
    if not isinstance(clip, AlignsText):
        raise SystemExit(f"evaluate.py: error: --clip {path} is a {type(clip).__name__} run, not a CLIP run")
    return clip.to(device)


def clip_rows(args: argparse.Namespace, model, dataset) -> list[dict]:
    """Zero-shot accuracy per target and retrieval recall; a confusion matrix PNG per target beside ``--out``."""
    results, matrices = evaluate_clip(model, dataset, args.batch_size, args.device)
    if args.out:
        for key, matrix in matrices.items():
            names = model.zero_shot[key]["classes"]
            path = matrix_figure(matrix, Path(args.out).with_name(f"{Path(args.out).stem}_zero_shot_{key}.png"),
                                 names, names, f"zero-shot {key} on {args.split} (rows: true)", fmt="{:.0f}")
            print(f"evaluate.py: wrote {path}")
    return [{"metric": name, "value": value} for name, value in results.items()]


def autoencoder_rows(args: argparse.Namespace, model, dataset, key: str) -> list[dict]:
    """Reconstruction scores on clean (and, for a denoiser, corrupted) inputs; likelihood and sample FID for VAEs."""
    judge = None
    if args.classifier:  # also: how often the classifier still sees the right labels in a reconstruction
        judge = build_feature_extractor("classifier", args.classifier).to(args.device)
    clean = {"input": "clean", **evaluate_reconstructions(model, dataset, args.batch_size, args.device,
                                                          seed=args.seed, judge=judge)}
    rows = [clean]
    if getattr(model, "corruption", None):
        rows.append({"input": "corrupted", **evaluate_reconstructions(model, dataset, args.batch_size, args.device,
                                                                      corrupted=True, seed=args.seed)})
    if isinstance(model, ScoresLikelihood):
        clean.update(evaluate_likelihood(model, dataset, args.k, args.batch_size, args.device, seed=args.seed))
    if isinstance(model, Generates) and (args.classifier or args.features == "inception"):
        rows += [{"input": "prior samples", **row} for row in generative_rows(args, model, dataset, key)]
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg, model = load_run_or_exit(args.ckpt, args.config, "evaluate.py")
    model = model.to(args.device)
    datamodule = instantiate(cfg.data)
    dataset = datamodule.build(args.split)
    key = f"{datamodule.dataset!r}|{args.split}"
    if isinstance(model, Reconstructs):
        rows = autoencoder_rows(args, model, dataset, key)
    elif isinstance(model, Generates):
        rows = generative_rows(args, model, dataset, key)
    elif isinstance(model, AlignsText):
        rows = clip_rows(args, model, dataset)
    elif isinstance(model, Classifies):
        rows = classifier_rows(model, dataset, args.batch_size, args.device)
    else:
        print(f"evaluate.py: error: no metrics for a {type(model).__name__}", file=sys.stderr)
        return 2
    report(rows, args.out, ckpt=args.ckpt, split=args.split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
