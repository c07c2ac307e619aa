"""The shapes dataset keeps its spec exactly: colours, geometry, captions, determinism, held-out split."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pixelforge.data.shapes import (
    COLORS,
    HELDOUT_COMBINATIONS,
    NUM_CLASSES,
    POSITIONS,
    RGB,
    SHAPES,
    SIZES,
    TEMPLATES,
    ShapesDataset,
    describe,
    render_shape,
)

SIZE_RANGES = {"small": (0.25, 0.33), "large": (0.50, 0.60)}
ANCHORS = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7),
           "bottom right": (0.7, 0.7), "center": (0.5, 0.5)}
JITTER = 0.04
CAPTION = re.compile(rf"^a ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) in the "
                     rf"({'|'.join(POSITIONS)})$")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Undo the [-1, 1] normalisation: ``C,H,W`` float -> ``H,W,C`` uint8."""
    return ((image + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def combo(item: dict) -> tuple[int, int, int, int]:
    """An item's (shape, color, size, position) indices."""
    return item["shape"], item["color"], item["size"], item["position"]


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive (top, bottom, left, right) of the True pixels."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return rows[0], rows[-1], cols[0], cols[-1]


def test_constants() -> None:
    assert NUM_CLASSES == {"shape": 3, "color": 7, "size": 2, "position": 5}
    assert SHAPES == ("circle", "square", "triangle")
    assert COLORS == ("red", "green", "blue", "yellow", "magenta", "cyan", "white")
    assert SIZES == ("small", "large")
    assert POSITIONS == ("top left", "top right", "bottom left", "bottom right", "center")
    assert [RGB[c] for c in COLORS] == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255),
                                         (0, 255, 255), (255, 255, 255)]
    assert len(set(HELDOUT_COMBINATIONS)) == 21
    limits = tuple(NUM_CLASSES.values())
    assert all(0 <= v < n for c in HELDOUT_COMBINATIONS for v, n in zip(c, limits, strict=True))


@pytest.mark.parametrize("image_size", [16, 32, 64, 128])
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_geometry_and_colour_are_exact(image_size: int, split: str) -> None:
    data = ShapesDataset(split, image_size=image_size, num_samples=120)
    for i in range(len(data)):
        item = data[i]
        image = to_uint8(item["image"])
        shape, size, position = SHAPES[item["shape"]], SIZES[item["size"]], POSITIONS[item["position"]]
        rgb = np.array(RGB[COLORS[item["color"]]], dtype=np.uint8)
        mask = (image == rgb).all(-1)
        assert (mask | (image == 0).all(-1)).all(), "every pixel is black or exactly the labelled colour"
        top, bottom, left, right = bbox(mask)
        height, width = bottom - top + 1, right - left + 1
        lo, hi = SIZE_RANGES[size]
        assert lo * image_size - 1 <= max(height, width) <= hi * image_size + 1
        for centre, anchor in zip(((left + right + 1) / 2, (top + bottom + 1) / 2), ANCHORS[position],
                                  strict=True):
            assert abs(centre - anchor * image_size) <= JITTER * image_size + 1
        box = mask[top:bottom + 1, left:right + 1]
        if shape == "square":
            assert height == width and box.all()
        elif shape == "circle":
            assert height == width and (box == box[::-1]).all() and (box == box.T).all()
            assert box.sum() == pytest.approx(math.pi * (width / 2) ** 2, rel=0.15)
        else:
            assert box[0].sum() < box[-1].sum() == width, "apex up, base is the full bottom side"
            assert height in (width, width - 1) and (box == box[:, ::-1]).all()


def test_render_shape_places_the_bounding_square() -> None:
    square = render_shape("square", "blue", 0.5, (0.5, 0.5), 64)
    assert square.shape == (64, 64, 3) and square.dtype == np.uint8
    expected = np.zeros((64, 64, 3), dtype=np.uint8)
    expected[16:48, 16:48] = (0, 0, 255)
    np.testing.assert_array_equal(square, expected)
    circle = (render_shape("circle", "white", 0.6, (0.5, 0.5), 256) > 0).all(-1)
    assert circle.sum() == pytest.approx(math.pi * (0.3 * 256) ** 2, rel=0.01)
    triangle = (render_shape("triangle", "green", 0.5, (0.5, 0.5), 64) > 0).any(-1)
    assert bbox(triangle) == (17, 47, 16, 47) and triangle[47, 16:48].all()
    clipped = (render_shape("square", "red", 0.6, (0.2, 0.9), 32) > 0).any(-1)
    assert bbox(clipped) == (13, 31, 0, 18), "a square crossing the border is shifted inside"
    with pytest.raises(ValueError, match="hexagon"):
        render_shape("hexagon", "red", 0.5, (0.5, 0.5), 32)
    with pytest.raises(ValueError, match="purple"):
        render_shape("circle", "purple", 0.5, (0.5, 0.5), 32)


def test_captions_match_labels() -> None:
    data = ShapesDataset("val", num_samples=50)
    for i in range(len(data)):
        item = data[i]
        words = CAPTION.match(item["caption"]).groups()
        assert words == (SIZES[item["size"]], COLORS[item["color"]], SHAPES[item["shape"]],
                         POSITIONS[item["position"]])
        assert item["caption"] == data.caption(i) == describe(data.attributes(i))
        assert data.attributes(i) == {k: item[k] for k in NUM_CLASSES}
    first = {"shape": 0, "color": 0, "size": 0, "position": 0}
    assert describe(first) == "a small red circle in the top left"


def test_all_templates_change_only_captions() -> None:
    plain = ShapesDataset("train", num_samples=100)
    varied = ShapesDataset("train", num_samples=100, caption_templates="all")
    used = set()
    for i in range(len(varied)):
        a, b = plain[i], varied[i]
        assert torch.equal(a["image"], b["image"]) and combo(a) == combo(b)
        options = [describe(varied.attributes(i), t) for t in range(len(TEMPLATES))]
        used.add(options.index(b["caption"]))
        assert varied.caption(i) == b["caption"]
    assert len(used) > 1


def test_deterministic_by_seed_split_and_index() -> None:
    a, b = ShapesDataset(seed=3, num_samples=20), ShapesDataset(seed=3, num_samples=20)
    other_seed = ShapesDataset(seed=4, num_samples=20)
    other_split = ShapesDataset("val", seed=3, num_samples=20)
    for i in range(len(a)):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["caption"] == b[i]["caption"]
    for other in (other_seed, other_split):
        assert any(not torch.equal(a[i]["image"], other[i]["image"]) for i in range(len(a)))
        assert any(a[i]["caption"] != other[i]["caption"] for i in range(len(a)))
    short = ShapesDataset(seed=3, num_samples=5)
    assert torch.equal(short[4]["image"], a[4]["image"]), "an item does not depend on the split's length"
    assert torch.equal(a[-1]["image"], a[19]["image"])


def test_heldout_split_separates_combinations() -> None:
    heldout = set(HELDOUT_COMBINATIONS)
    for split in ("train", "val", "test"):
        data = ShapesDataset(split, num_samples=3000, seed=1)
        seen = {tuple(data.attributes(i).values()) for i in range(len(data))}
        assert not seen & heldout
        if split == "train":
            assert len(seen) == 210 - 21
            for k, n in enumerate(NUM_CLASSES.values()):
                assert {c[k] for c in seen} == set(range(n)), "every attribute value occurs in training"
    data = ShapesDataset("heldout", num_samples=1000, seed=1)
    assert {tuple(data.attributes(i).values()) for i in range(len(data))} == heldout


def test_a_judges_splits_include_the_heldout_combinations_on_request() -> None:
    heldout = set(HELDOUT_COMBINATIONS)
    data = ShapesDataset("train", num_samples=3000, seed=1, include_heldout=True)
    assert len({tuple(data.attributes(i).values()) for i in range(len(data))}) == 210
    judged = ShapesDataset("heldout", num_samples=300, seed=1, include_heldout=True)
    assert {tuple(judged.attributes(i).values()) for i in range(len(judged))} == heldout
    with pytest.raises(ValueError, match="include_heldout must be true or false, got 'yes'"):
        ShapesDataset(include_heldout="yes")


def test_lengths_transform_and_batching() -> None:
    assert [len(ShapesDataset(s)) for s in ("train", "val", "test", "heldout")] == [20000, 2000, 2000, 2000]
    assert len(ShapesDataset("val", num_samples=7)) == 7
    assert len(ShapesDataset("test", num_samples={"test": 9, "train": 3})) == 9
    assert len(ShapesDataset("val", num_samples={"train": 3})) == 2000
    raw = ShapesDataset(transform=lambda x: x, image_size=24, num_samples=2)[0]["image"]
    assert raw.dtype == torch.uint8 and raw.shape == (3, 24, 24)
    data = ShapesDataset(num_samples=8)
    assert data.channels == 3 and data.image_size == 32
    batch = next(iter(DataLoader(data, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert len(batch["caption"]) == 4 and batch["shape"].shape == (4,)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    with pytest.raises(IndexError):
        data[8]


@pytest.mark.parametrize("image_size", [8, 15, 257, 1000])
def test_bad_image_size(image_size: int) -> None:
    with pytest.raises(ValueError, match=rf"16 to 256, got {image_size}"):
        ShapesDataset(image_size=image_size)
    with pytest.raises(ValueError, match=rf"16 to 256, got {image_size}"):
        render_shape("circle", "red", 0.5, (0.5, 0.5), image_size)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'training'.*'heldout'"):
        ShapesDataset("training")
    with pytest.raises(ValueError, match="'every'"):
        ShapesDataset(caption_templates="every")
    with pytest.raises(ValueError, match="'trian'"):
        ShapesDataset(num_samples={"trian": 5})
    with pytest.raises(ValueError, match="-1"):
        ShapesDataset(num_samples=-1)
    with pytest.raises(ValueError, match="-2"):
        ShapesDataset(seed=-2)


def test_zero_shot_templates_are_whole_captions_over_the_other_attributes() -> None:
    from pixelforge.data.shapes import describe, zero_shot_templates

    templates = zero_shot_templates("size")
    assert len(templates) == 3 * 7 * 5 and len(set(templates)) == len(templates)
    assert describe({"shape": 0, "color": 0, "size": 1, "position": 0}) == templates[0].format("large")
    with pytest.raises(ValueError, match="unknown attribute 'hue'"):
        zero_shot_templates("hue")
