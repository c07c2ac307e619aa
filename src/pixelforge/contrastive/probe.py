"""Linear evaluation of frozen features, the protocol of SimCLR and CLIP: a logistic regression on L2-normalised
features of the training split scores the test split, with all labels and with a few per class, beside the same
encoder trained from scratch on those few labels (what the pre-training bought)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pixelforge.modules.augment import ViewAugment


@torch.no_grad()
def extract(embed: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, keys: Sequence[str],
            batch_size: int = 500, device: str | torch.device = "cpu") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(L2-normalised features ``N,F``, ``{key: labels N}``) of a whole dataset, in its order."""
    features, labels = [], {key: [] for key in keys}
    for batch in DataLoader(dataset, batch_size=batch_size):
        features.append(F.normalize(embed(batch["image"].to(device)).float(), dim=1).cpu())
        for key in keys:
            labels[key].append(batch[key])
    return torch.cat(features), {key: torch.cat(values) for key, values in labels.items()}


def few_labels(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` examples of every class (a seeded choice); a class with fewer is an error."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        if len(members) < per_class:
            raise ValueError(f"class {int(c)} has {len(members)} examples, fewer than {per_class} labels per class")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen)


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-4,
                     iterations: int = 300) -> nn.Linear:
    """Multinomial logistic regression with an L2 penalty, fitted full-batch by L-BFGS: deterministic, and no
    learning rate to tune."""
    torch.manual_seed(0)
    probe = nn.Linear(features.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1, max_iter=iterations, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(features), labels) + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


WEIGHT_DECAYS = (1e-3, 1e-4, 1e-5, 1e-6, 0.0)


def select_weight_decay(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                        num_classes: int, grid: Sequence[float] = WEIGHT_DECAYS) -> float:
    """The probe's L2 penalty with the best accuracy on a validation split (CLIP's protocol), never the test."""
    scores = [accuracy(fit_linear_probe(*train, num_classes, wd)(val[0]), val[1]) for wd in grid]
    return grid[max(range(len(grid)), key=lambda i: (scores[i], -i))]  # ties: the stronger penalty


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def train_supervised(backbone: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     augment: ViewAugment | None = None, steps: int = 500, batch_size: int = 64, lr: float = 1e-3,
                     seed: int = 0) -> nn.Module:
    """The baseline: ``backbone`` (fresh) with a linear head trained by AdamW on ``images`` alone, with ``augment``
    views of them (mild crops by default) so it is not the augmentation the pre-training is credited with."""
    torch.manual_seed(seed)
    augment = augment if augment is not None else ViewAugment(crop_scale=(0.6, 1.0), flip=0.0, jitter=0.0,
                                                              grayscale=0.0)
    model = nn.Sequential(backbone, nn.Linear(backbone.out_features, num_classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(len(images), (min(batch_size, len(images)),), generator=generator)
        loss = F.cross_entropy(model(augment(images[index], generator)), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()
