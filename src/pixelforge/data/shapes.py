"""Procedural captioned shapes: one flat-coloured shape on black, with exact labels and a held-out split.

Every item is a pure function of ``(seed, split, index, image_size)``, rendered on demand, so any item can be
drawn alone and DataLoader workers share no state. A fixed tenth of the attribute combinations never occurs in
``train``/``val``/``test`` and is all that ``heldout`` contains, for compositional generalisation tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pixelforge.data.base import Transform, build_transform, check_split

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan", "white")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
RGB: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
}
VALUES = {"shape": SHAPES, "color": COLORS, "size": SIZES, "position": POSITIONS}  # each attribute's class names
NUM_CLASSES = {key: len(names) for key, names in VALUES.items()}
ATTRIBUTES = tuple(NUM_CLASSES)

SIZE_RANGES = {"small": (0.25, 0.33), "large": (0.50, 0.60)}
POSITION_CENTERS = {
    "top left": (0.3, 0.3),
    "top right": (0.7, 0.3),
    "bottom left": (0.3, 0.7),
    "bottom right": (0.7, 0.7),
    "center": (0.5, 0.5),
}
JITTER = 0.04
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 256

TEMPLATES = (
    "a {size} {color} {shape} in the {position}",
    "{size} {color} {shape}, {position}",
    "a {color} {shape} that is {size}, in the {position}",
    "there is a {size} {color} {shape} in the {position}",
    "a {size} {shape} in {color}, in the {position}",
)
TEMPLATE_CHOICES = ("default", "all")

SPLITS = ("train", "val", "test", "heldout")
DEFAULT_NUM_SAMPLES = {"train": 20000, "val": 2000, "test": 2000, "heldout": 2000}

ALL_COMBINATIONS: tuple[tuple[int, int, int, int], ...] = tuple(
    itertools.product(*(range(n) for n in NUM_CLASSES.values()))
)
HELDOUT_COMBINATIONS: tuple[tuple[int, int, int, int], ...] = tuple(
    ALL_COMBINATIONS[j]
    for j in sorted(np.random.default_rng(0).choice(len(ALL_COMBINATIONS), 21, replace=False).tolist())
)
TRAIN_COMBINATIONS: tuple[tuple[int, int, int, int], ...] = tuple(
    c for c in ALL_COMBINATIONS if c not in HELDOUT_COMBINATIONS
)


def combinations(split: str, include_heldout: bool = False) -> tuple[tuple[int, int, int, int], ...]:
    """The (shape, color, size, position) index tuples that items of ``split`` are drawn from: ``heldout`` holds
    only the held-out ones, the other splits the rest, or all of them with ``include_heldout``."""
    check_split(split, SPLITS)
    if split == "heldout":
        return HELDOUT_COMBINATIONS
    return ALL_COMBINATIONS if include_heldout else TRAIN_COMBINATIONS


def check_image_size(image_size: int) -> int:
    """Return ``image_size`` or raise a ValueError naming it and the supported range."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not (
        MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE
    ):
        raise ValueError(
            f"image_size must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}, got {image_size!r}"
        )
    return image_size


def describe(attrs: Mapping[str, int], template: int = 0) -> str:
    """Caption for attribute indices, e.g. ``"a small red circle in the top left"`` with template 0."""
    return TEMPLATES[template].format(
        size=SIZES[attrs["size"]],
        color=COLORS[attrs["color"]],
        shape=SHAPES[attrs["shape"]],
        position=POSITIONS[attrs["position"]],
    )


def zero_shot_templates(attribute: str, template: int = 0) -> list[str]:
    """Zero-shot prompt templates for one attribute: caption ``template`` with every value of the other three
    attributes filled in and ``{}`` for this one (``"a {} red circle in the top left"``, ... for size), so each
    class's prompts are whole captions, as the text tower learned them, averaged over everything else."""
    if attribute not in NUM_CLASSES:
        raise ValueError(f"unknown attribute {attribute!r}; valid: {ATTRIBUTES}")
    others = [key for key in ATTRIBUTES if key != attribute]
    return [TEMPLATES[template].format(**dict(zip(others, values, strict=True)), **{attribute: "{}"})
            for values in itertools.product(*(VALUES[key] for key in others))]


def joint_prompts(template: int = 0) -> dict[str, Any]:
    """One caption (``template``) for each of the 210 attribute combinations and its four labels: zero-shot over the
    joint label space, each attribute read off the best-matching caption."""
    return {"prompts": [describe(dict(zip(ATTRIBUTES, c, strict=True)), template) for c in ALL_COMBINATIONS],
            "labels": {key: [c[i] for c in ALL_COMBINATIONS] for i, key in enumerate(ATTRIBUTES)}}


def _labels(combination: tuple[int, int, int, int]) -> dict[str, int]:
    """Name the indices of a (shape, color, size, position) tuple."""
    return dict(zip(ATTRIBUTES, combination, strict=True))


def _round(x: float) -> int:
    """Round half up, so pixel snapping never depends on banker's rounding."""
    return int(np.floor(x + 0.5))


def shape_box(size_frac: float, center: tuple[float, float], image_size: int) -> tuple[int, int, int]:
    """``(side, left, top)`` of the shape's bounding square in pixels: ``size_frac`` and ``center = (x, y)`` as
    fractions of the image side, side and corner rounded, shifted inside the image if it would cross an edge."""
    side = min(max(_round(size_frac * image_size), 1), image_size)
    left = min(max(_round(center[0] * image_size - side / 2), 0), image_size - side)
    top = min(max(_round(center[1] * image_size - side / 2), 0), image_size - side)
    return side, left, top


def shape_mask(shape: str, side: int) -> np.ndarray:
    """The filled ``shape`` in a ``side x side`` box as a bool array, cut by exact pixel-centre tests: a square
    fills its box, a circle is inscribed in it, a triangle has its apex at the top-centre and the bottom as base."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; valid shapes are {', '.join(map(repr, SHAPES))}")
    # Twice the pixel-centre offset from the box centre, so every test below is exact integer arithmetic.
    offset = 2 * np.arange(side) + 1 - side
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "circle":
        return offset[:, None] ** 2 + offset[None, :] ** 2 <= side**2
    return np.abs(offset)[None, :] <= np.arange(side)[:, None]  # row r (centre r + 0.5 below the apex): r + 0.5 wide


def placements(size: str, position: str, image_size: int) -> list[tuple[int, int, int]]:
    """Every ``(side, left, top)`` box the dataset can draw for a ``size`` and ``position`` name: the sides its
    size range rounds to, and the corners its jittered centres round to, at each side."""
    if size not in SIZE_RANGES or position not in POSITION_CENTERS:
        raise ValueError(f"unknown size {size!r} or position {position!r}; valid: {SIZES} and {POSITIONS}")
    check_image_size(image_size)
    lo, hi = SIZE_RANGES[size]
    boxes = set()
    for side in range(shape_box(lo, (0.5, 0.5), image_size)[0], shape_box(hi, (0.5, 0.5), image_size)[0] + 1):
        corners = [range(_round((c - JITTER) * image_size - side / 2), _round((c + JITTER) * image_size - side / 2) + 1)
                   for c in POSITION_CENTERS[position]]
        boxes.update((side, min(max(x, 0), image_size - side), min(max(y, 0), image_size - side))
                     for x in corners[0] for y in corners[1])
    return sorted(boxes)


def render_shape(
    shape: str, color: str, size_frac: float, center: tuple[float, float], image_size: int
) -> np.ndarray:
    """Draw one filled ``shape`` in pure ``color`` on black: a uint8 ``H,W,3`` array with no anti-aliasing, the
    box from ``shape_box`` and the shape in it from ``shape_mask``."""
    if color not in RGB:
        raise ValueError(f"unknown color {color!r}; valid colors are {', '.join(map(repr, COLORS))}")
    check_image_size(image_size)
    side, left, top = shape_box(size_frac, center, image_size)
    mask = shape_mask(shape, side)
    image = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    image[top:top + side, left:left + side][mask] = RGB[color]
    return image


class ShapesDataset(Dataset):
    """Captioned single-shape images with shape/color/size/position labels, rendered lazily and exactly."""

    channels = 3

    def __init__(
        self,
        split: str = "train",
        transform: Transform | None = None,
        image_size: int = 32,
        num_samples: int | Mapping[str, int] | None = None,
        seed: int = 0,
        caption_templates: str = "default",
        include_heldout: bool = False,
    ) -> None:
        """Validate the arguments; nothing is rendered until an item is asked for. ``include_heldout``: train, val
        and test also draw the held-out combinations (for a judge of generated samples, which must know them all;
        a model tested for compositional generalisation must not see them)."""
        self.split = check_split(split, SPLITS)
        self.image_size = check_image_size(image_size)
        if caption_templates not in TEMPLATE_CHOICES:
            raise ValueError(
                f"caption_templates must be one of {TEMPLATE_CHOICES}, got {caption_templates!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.caption_templates = caption_templates
        self.seed = seed
        self.transform = build_transform() if transform is None else transform
        self.num_samples = self._resolve_num_samples(num_samples)
        if not isinstance(include_heldout, bool):
            raise ValueError(f"include_heldout must be true or false, got {include_heldout!r}")
        self.combinations = combinations(split, include_heldout)
        self._split_index = SPLITS.index(split)

    def _resolve_num_samples(self, num_samples: int | Mapping[str, int] | None) -> int:
        """Length of this split: the default, an int for this split, or this split's entry in a mapping."""
        if isinstance(num_samples, Mapping):
            for key in num_samples:
                check_split(key, SPLITS)
            num_samples = num_samples.get(self.split)
        n = DEFAULT_NUM_SAMPLES[self.split] if num_samples is None else num_samples
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"num_samples for split {self.split!r} must be a non-negative int, got {n!r}")
        return n

    def __len__(self) -> int:
        """Number of items in this split."""
        return self.num_samples

    def _draw(self, i: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """Item ``i``'s combination and its uniform draws (size, x jitter, y jitter, template), unrendered."""
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"index {i} out of range for {self.num_samples} {self.split!r} items")
        i %= self.num_samples
        u = np.random.default_rng((self.seed, self._split_index, i)).random(5)
        return self.combinations[int(u[0] * len(self.combinations))], u[1:]

    def attributes(self, i: int) -> dict[str, int]:
        """Attribute indices of item ``i`` without rendering it (cheap labels for a whole split)."""
        return _labels(self._draw(i)[0])

    def caption(self, i: int) -> str:
        """Caption of item ``i`` without rendering it."""
        return self._caption(*self._draw(i))

    def render(self, i: int) -> np.ndarray:
        """Item ``i``'s raw uint8 ``H,W,3`` image, before the transform."""
        return self._render(*self._draw(i))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | str | int]:
        """Item ``i``: transformed image, caption and the four attribute indices."""
        combination, u = self._draw(i)
        image = self.transform(torch.from_numpy(self._render(combination, u)).permute(2, 0, 1))
        return {"image": image, "caption": self._caption(combination, u), **_labels(combination)}

    def _caption(self, combination: tuple[int, int, int, int], u: np.ndarray) -> str:
        """Caption from drawn values: template 0, or the item's own template when all are in use."""
        template = int(u[3] * len(TEMPLATES)) if self.caption_templates == "all" else 0
        return describe(_labels(combination), template)

    def _render(self, combination: tuple[int, int, int, int], u: np.ndarray) -> np.ndarray:
        """Image from drawn values: size uniform in its range, centre jittered uniformly around its anchor."""
        shape, color, size, position = combination
        lo, hi = SIZE_RANGES[SIZES[size]]
        cx, cy = POSITION_CENTERS[POSITIONS[position]]
        jx, jy = JITTER * (2 * u[1:3] - 1)
        return render_shape(SHAPES[shape], COLORS[color], lo + u[0] * (hi - lo), (cx + jx, cy + jy),
                            self.image_size)
