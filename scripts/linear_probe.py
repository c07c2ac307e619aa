"""Linear evaluation of a self-supervised (or any feature) run: a logistic regression on its frozen, L2-normalised
features of the training split (its L2 penalty chosen on the val split), scored on a held-out split, per target,
with all labels and with a few per class; ``--baseline`` trains the run's own encoder from scratch on those few
labels beside it. Prints a Markdown table, writes JSON (and a .md table) to ``--out`` and a PCA picture of the
features coloured by each target beside it.

    python scripts/linear_probe.py --ckpt logs/<simclr_mnist5k run> --labels_per_class 10 100 --baseline \\
        --out results/simclr_mnist5k_probe.json
"""

from __future__ import annotations

import argparse
import sys

import torch
from hydra.utils import instantiate

from pixelforge.contrastive.knn import knn_predict
from pixelforge.contrastive.probe import (
    accuracy,
    extract,
    few_labels,
    fit_linear_probe,
    select_weight_decay,
    train_supervised,
)
from pixelforge.inference.arguments import exit_on_error, load_run_or_exit, positive_int
from pixelforge.protocols import Classifies, Embeds
from pixelforge.utils.plots import embedding_figure
from pixelforge.utils.tables import report

PROG = "linear_probe.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="run directory or checkpoint whose features are probed")
    parser.add_argument("--config", help="config to build the model from (default: the run's)")
    parser.add_argument("--split", default="test", help="the split scored (default: test)")
    parser.add_argument("--labels_per_class", type=positive_int, nargs="*", default=[],
                        help="also probe with only this many training labels per class (e.g. 10 100)")
    parser.add_argument("--baseline", action="store_true",
                        help="train the run's encoder from scratch on each few-label set, as the reference")
    parser.add_argument("--baseline_steps", type=positive_int, default=500)
    parser.add_argument("--weight_decay", type=float,
                        help="the probe's L2 penalty (default: the best of a grid on the val split)")
    parser.add_argument("--k", type=positive_int, default=20, help="neighbours of the kNN row (20 fits a few thousand)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the few labels")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="JSON file for the results (.md table and .png embedding beside it)")
    return parser.parse_args(argv)


def embedder(model):
    """The run's feature map: ``embed`` of a contrastive run, a classifier's penultimate ``features``."""
    if isinstance(model, Embeds):
        return model.embed
    if isinstance(model, Classifies):
        return model.features
    raise ValueError(f"a {type(model).__name__} has no features to probe (it neither embeds nor classifies)")


def rows_for(args: argparse.Namespace, cfg, datamodule, train, val, test, targets: dict[str, int]) -> list[dict]:
    """One row per target and label budget: probe accuracy (its L2 penalty chosen on ``val``), and the from-scratch
    baseline's."""
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = train, val, test
    rows = []
    for key, classes in targets.items():
        knn = knn_predict(test_x, train_x, train_y[key], classes, args.k)
        for per_class in [None, *args.labels_per_class]:
            index = torch.arange(len(train_x)) if per_class is None else few_labels(train_y[key], per_class, args.seed)
            labelled = (train_x[index], train_y[key][index])
            decay = args.weight_decay
            if decay is None:
                decay = select_weight_decay(labelled, (val_x, val_y[key]), classes)
            probe = fit_linear_probe(*labelled, classes, decay)
            row = {"target": key, "labels": "all" if per_class is None else f"{per_class}/class",
                   "probe_acc": accuracy(probe(test_x), test_y[key]), "weight_decay": decay}
            if per_class is None:
                rows.append({**row, "knn_acc": float((knn == test_y[key]).float().mean())})
                continue
            if args.baseline:
                row["scratch_acc"] = scratch_accuracy(args, cfg, datamodule, index, key, classes, test_y[key])
            rows.append(row)
            print(f"{key} {per_class}/class: {row}", flush=True)
    return rows


def scratch_accuracy(args: argparse.Namespace, cfg, datamodule, index: torch.Tensor, key: str, classes: int,
                     test_labels: torch.Tensor) -> float:
    """Test accuracy of the run's backbone, built fresh from its config and trained on the chosen labels alone."""
    train, test = datamodule.build("train"), datamodule.build(args.split)  # built once by the datamodule
    images = torch.stack([train[int(i)]["image"] for i in index])
    labels = torch.tensor([int(train[int(i)][key]) for i in index])
    model = train_supervised(instantiate(cfg.model.backbone), images, labels, classes, steps=args.baseline_steps,
                             seed=args.seed)
    with torch.no_grad():
        logits = torch.cat([model(batch) for batch in torch.stack([s["image"] for s in test]).split(500)])
    return accuracy(logits, test_labels)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg, model = load_run_or_exit(args.ckpt, args.config, PROG)
    with exit_on_error(PROG):
        embed = embedder(model.to(args.device))
        datamodule = instantiate(cfg.data)
        targets = dict(datamodule.targets)
        if not targets:
            raise ValueError(f"the run's data ({cfg.data.dataset._target_}) has no labels to probe")
        train, val, test = (extract(embed, datamodule.build(split), list(targets), device=args.device)
                            for split in ("train", "val", args.split))
        rows = rows_for(args, cfg, datamodule, train, val, test, targets)
    out = report(rows, args.out, ckpt=args.ckpt, split=args.split)
    if out is not None:
        picture = embedding_figure(test[0], test[1], out.with_suffix(".png"), title=f"{args.split} features:")
        print(f"{PROG}: wrote {out}, {out.with_suffix('.md')} and {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
