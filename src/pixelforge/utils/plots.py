"""Figures a person would rather look at than read: a 2-D embedding coloured by label, similarity and confusion
matrices (matplotlib's object API, so no display or global state is touched)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pixelforge.utils.images import grid


def pca_2d(features: torch.Tensor) -> torch.Tensor:
    """The ``N,2`` projection of ``features`` ``N,F`` on their two principal axes."""
    centred = features.float() - features.float().mean(0)
    _, _, v = torch.pca_lowrank(centred, q=2, center=False)
    return centred @ v[:, :2]


def tsne_2d(features: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The ``N,2`` t-SNE map of ``features`` (scikit-learn's, started from the PCA map): neighbours stay close."""
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(features) - 1) / 3)
    points = TSNE(2, perplexity=perplexity, init=pca_2d(features).numpy(), random_state=seed).fit_transform(
        features.float().numpy())
    return torch.from_numpy(points)


def embedding_figure(features: torch.Tensor, labels: dict[str, torch.Tensor], path: str | Path,
                     title: str = "", method: str = "tsne") -> Path:
    """One 2-D map of ``features`` (``method`` "tsne" or "pca") per label key, each point coloured by its class."""
    maps = {"tsne": tsne_2d, "pca": pca_2d}
    if method not in maps:
        raise ValueError(f"method {method!r} is not one of {sorted(maps)}")
    points = maps[method](features).numpy()
    figure = Figure(figsize=(4.2 * len(labels), 4))
    for i, (key, values) in enumerate(labels.items()):
        axes = figure.add_subplot(1, len(labels), i + 1)
        scatter = axes.scatter(points[:, 0], points[:, 1], c=values.numpy(), cmap="tab10", s=4, alpha=0.7)
        axes.legend(*scatter.legend_elements(), title=key, fontsize=6, title_fontsize=7, loc="best", markerscale=0.6)
        axes.set_title(f"{title} {key} ({method})".strip(), fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
    return save(figure, path)


def draw_matrix(figure: Figure, axes, matrix: torch.Tensor, rows: Sequence[str], columns: Sequence[str],
                fmt: str = "{:.2f}") -> None:
    """A heat map of ``matrix`` on ``axes`` with its row and column names and, when it is small, its values."""
    matrix = matrix.float()
    image = axes.imshow(matrix.numpy(), cmap="viridis")
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=7)
    axes.set_yticks(range(len(rows)), rows, fontsize=7)
    if matrix.numel() <= 400:
        middle = (matrix.max() + matrix.min()) / 2
        for r, c in torch.cartesian_prod(torch.arange(len(rows)), torch.arange(len(columns))).tolist():
            value = float(matrix[r, c])
            axes.text(c, r, fmt.format(value), ha="center", va="center", fontsize=6,
                      color="black" if value > middle else "white")


def matrix_figure(matrix: torch.Tensor, path: str | Path, rows: Sequence[str], columns: Sequence[str],
                  title: str = "", fmt: str = "{:.2f}") -> Path:
    """A similarity or confusion matrix as a heat map with its row and column names and values, saved as PNG."""
    size = max(3.0, 0.45 * max(len(rows), len(columns)) + 1.5)
    figure = Figure(figsize=(size + 1, size))
    axes = figure.add_subplot()
    draw_matrix(figure, axes, matrix, rows, columns, fmt)
    axes.set_title(title, fontsize=9)
    return save(figure, path)


def similarity_figure(similarity: torch.Tensor, images: torch.Tensor, captions: Sequence[str]) -> Figure:
    """A batch's image-text cosine similarities (rows: images, shown above; columns: their captions)."""
    n = len(images)
    figure = Figure(figsize=(max(4.0, 0.5 * n + 2), max(4.0, 0.5 * n + 3)))
    strip = figure.add_axes((0.05, 0.86, 0.9, 0.12))
    strip.imshow(grid(images, nrow=n).permute(1, 2, 0).numpy())
    strip.set_axis_off()
    strip.set_title("images 0..n-1, left to right", fontsize=7)
    axes = figure.add_axes((0.3, 0.3, 0.6, 0.52))
    draw_matrix(figure, axes, similarity, [str(i) for i in range(n)], [c[:28] for c in captions])
    return figure


def figure_tensor(figure: Figure) -> torch.Tensor:
    """A drawn figure as a ``3,H,W`` float tensor in [-1, 1] (for the image logs)."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgba = torch.from_numpy(np.asarray(canvas.buffer_rgba()).copy())
    return rgba[..., :3].permute(2, 0, 1).float() / 127.5 - 1


def save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def curve_figure(x: Sequence[float], curves: dict[str, Sequence[float]], path: str | Path, xlabel: str,
                 ylabel: str, title: str = "", target: float | None = None) -> Path:
    """One line per named curve over ``x`` (markers at the points), with an optional dashed target level."""
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for name, values in curves.items():
        axes.plot(x, values, marker="o", label=name)
    if target is not None:
        axes.axhline(target, linestyle="--", color="grey", label=f"target {target:g}")
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return save(figure, path)
