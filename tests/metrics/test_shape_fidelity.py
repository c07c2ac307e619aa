"""The shape-fidelity judge: the dataset's own renders fit exactly, the distortions a person rejects (pinched
squares, rounded diamonds, wrong shape, wrong place) do not, and evaluate_samples reports it with a worst-fit grid."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pixelforge.data.shapes import (
    COLORS,
    POSITION_CENTERS,
    POSITIONS,
    SHAPES,
    SIZE_RANGES,
    SIZES,
    ShapesDataset,
    render_shape,
)
from pixelforge.metrics.generation import evaluate_samples
from pixelforge.metrics.shape_fidelity import DENT, THRESHOLD, dent_depth, fit_iou, foreground, shape_fidelity


def labels_of(items: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.tensor([item[key] for item in items]) for key in ("shape", "size", "position")}


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_the_datasets_own_renders_fit_exactly(split: str) -> None:
    dataset = ShapesDataset(split, image_size=32, num_samples=300)
    items = [dataset[i] for i in range(len(dataset))]
    results, iou = shape_fidelity(torch.stack([item["image"] for item in items]), labels_of(items))
    assert iou.min() == 1 and results["shape_fit"] == 1
    assert {"shape_fit/circle", "shape_fit/square", "shape_fit/triangle"} <= set(results)


def superellipse(side: int, p: float) -> np.ndarray:
    """|x|^p + |y|^p <= 1 in a side x side box: p = 2 a circle, p = 1 a diamond, large p a rounded square."""
    o = (2 * np.arange(side) + 1 - side) / side
    return np.abs(o[:, None]) ** p + np.abs(o[None, :]) ** p <= 1


def pinched(side: int, depth: float) -> np.ndarray:
    """A square whose four sides bow inwards by ``depth`` of the side at their middle."""
    t = (np.arange(side) + 0.5) / side
    bow = depth * side * (1 - (2 * t - 1) ** 2)
    y, x = np.arange(side)[:, None] + 0.5, np.arange(side)[None, :] + 0.5
    return (y > bow[None, :]) & (side - y > bow[None, :]) & (x > bow[:, None]) & (side - x > bow[:, None])


def on_canvas(mask: np.ndarray, left: int, top: int, size: int = 32) -> torch.Tensor:
    image = -torch.ones(1, 3, size, size)
    image[0, 1, top:top + len(mask), left:left + len(mask)][torch.from_numpy(mask)] = 1
    return image


def large_center(shape: str) -> dict[str, torch.Tensor]:
    return {"shape": torch.tensor([SHAPES.index(shape)]), "size": torch.tensor([SIZES.index("large")]),
            "position": torch.tensor([POSITIONS.index("center")])}


@pytest.mark.parametrize(("mask", "caption_shape", "fits"), [
    (np.ones((18, 18), bool), "square", True),
    (superellipse(18, 2), "circle", True),
    (superellipse(18, 6), "square", True),      # corners softened by a pixel: still a square to a person
    (pinched(18, 0.15), "square", False),
    (pinched(18, 0.25), "square", False),
    (superellipse(18, 1), "circle", False),     # a diamond
    (superellipse(18, 1.1), "circle", False),   # a rounded diamond (p >= 1.2 is within a pixel of a circle here)
    (np.ones((18, 18), bool), "circle", False),
    (superellipse(18, 2), "triangle", False),
], ids=["square", "circle", "soft-square", "pinched-15", "pinched-25", "diamond", "rounded-diamond",
        "square-as-circle", "circle-as-triangle"])
def test_distortions_a_person_rejects_do_not_fit(mask: np.ndarray, caption_shape: str, fits: bool) -> None:
    results, iou = shape_fidelity(on_canvas(mask, 7, 7), large_center(caption_shape))
    assert results["shape_fit"] == fits, iou


PINCHED = """
.#........#.
############
###########.
###########.
###########.
##########..
##########..
##########..
##########..
##########..
###########.
####....##..
"""  # a "small cyan square in the bottom right" of the default recipe: corners drawn out, sides bowed in


def test_a_small_pinched_square_overlaps_well_but_has_a_dent() -> None:
    pinch = np.array([[c == "#" for c in row] for row in PINCHED.split()])
    small = {"shape": torch.tensor([SHAPES.index("square")]), "size": torch.tensor([SIZES.index("small")]),
             "position": torch.tensor([POSITIONS.index("bottom right")])}
    results, iou = shape_fidelity(on_canvas(pinch, 17, 16), small)
    assert iou.item() >= THRESHOLD, "the IoU alone passes it"
    assert results["shape_dented"] == 1 and results["shape_fit"] == 0
    assert dent_depth(torch.from_numpy(pinch)) > DENT


def test_dent_depth_of_convex_shapes_notches_and_the_datasets_renders() -> None:
    square = np.ones((6, 6), bool)
    assert dent_depth(torch.from_numpy(square)) == 0
    notched = square.copy()
    notched[0, 2] = False  # a one-pixel notch in a straight side: its centre half a pixel inside the hull
    assert dent_depth(torch.from_numpy(notched)) == pytest.approx(0.5)
    assert dent_depth(torch.zeros(4, 4, dtype=torch.bool)) == 0
    dataset = ShapesDataset("train", image_size=32, num_samples=300)
    depths = [dent_depth(foreground(dataset[i]["image"][None])[0]) for i in range(len(dataset))]
    assert max(depths) < 0.25 < DENT


def test_a_small_circle_is_not_a_square_though_it_covers_most_of_one() -> None:
    circle = on_canvas(superellipse(9, 2), 11, 11)
    small = {"size": torch.tensor([SIZES.index("small")]), "position": torch.tensor([POSITIONS.index("center")])}
    scores = fit_iou(circle, small)[0]
    assert scores[SHAPES.index("circle")] == 1 and scores[SHAPES.index("square")] >= THRESHOLD
    assert shape_fidelity(circle, {**small, "shape": torch.tensor([SHAPES.index("square")])})[0]["shape_fit"] == 0


def test_the_captioned_place_and_size_count() -> None:
    square = np.ones((18, 18), bool)
    assert shape_fidelity(on_canvas(square, 7, 7), large_center("square"))[1].item() == 1
    assert shape_fidelity(on_canvas(square, 0, 0), large_center("square"))[1].item() < THRESHOLD  # top left
    assert shape_fidelity(on_canvas(np.ones((9, 9), bool), 11, 11), large_center("square"))[1].item() < THRESHOLD
    with pytest.raises(ValueError, match=r"missing \['position'\]"):
        fit_iou(on_canvas(square, 7, 7), {"shape": torch.tensor([1]), "size": torch.tensor([1])})


class Painter(torch.nn.Module):
    """A text-to-image 'model' that paints the caption's colour, size and place, always as ``shape``."""

    def __init__(self, shape: str | None) -> None:
        super().__init__()
        self.shape = shape
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.conditioner = SimpleNamespace(text_key="caption")

    def sample(self, n: int, conditions: dict, generator=None, **kwargs) -> torch.Tensor:
        images = []
        for caption in conditions["caption"]:
            words = caption.split()
            shape = self.shape or next(w for w in words if w in SHAPES)
            color = next(w for w in words if w in COLORS)
            size = sum(SIZE_RANGES[next(w for w in words if w in SIZES)]) / 2
            position = POSITION_CENTERS[caption.split(" in the ")[1]]
            images.append(torch.from_numpy(render_shape(shape, color, size, position, 32)).permute(2, 0, 1))
        return torch.stack(images).float() / 127.5 - 1


class Features(torch.nn.Module):
    """A few pooled colour features: enough for FID/KID to run, small enough for a fast test."""

    name = "pooled"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)


def test_evaluate_samples_reports_shape_fit_and_draws_the_worst(tmp_path: Path) -> None:
    dataset = ShapesDataset("heldout", image_size=32, num_samples=60)
    faithful = evaluate_samples(Painter(None), Features(), dataset, "shapes", n_samples=24, batch_size=12,
                                cache_dir=tmp_path, kid_subset_size=12, worst_path=tmp_path / "worst.png")
    assert faithful["shape_fit"] == 1 and faithful["shape_iou"] == 1
    assert Image.open(tmp_path / "worst.png").size[0] > 4 * 64
    circles = evaluate_samples(Painter("circle"), Features(), dataset, "shapes", n_samples=24, batch_size=12,
                               cache_dir=tmp_path, kid_subset_size=12)
    assert circles["shape_fit/circle"] == 1
    assert circles["shape_fit/square"] == 0 and circles["shape_fit/triangle"] == 0
    assert 0 < circles["shape_fit"] < 1
