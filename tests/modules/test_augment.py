"""SimCLR's batched views: each image its own random parameters, seeded, and each step what it claims."""

from __future__ import annotations

import pytest
import torch

from pixelforge.modules.augment import ViewAugment, gray, random_crops, rotate_hue

NONE = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "flip": 0.0, "jitter": 0.0, "grayscale": 0.0}


def images(n: int = 6, channels: int = 3) -> torch.Tensor:
    return torch.rand(n, channels, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_views_differ_per_image_and_repeat_with_the_seed() -> None:
    x = images(1).expand(8, -1, -1, -1)  # eight copies of one image: eight different views
    augment = ViewAugment(blur=0.5)
    views = augment(x, torch.Generator().manual_seed(1))
    assert views.shape == x.shape and views.min() >= -1 and views.max() <= 1
    assert len({tuple(v.flatten()[:32].tolist()) for v in views}) == 8
    assert torch.equal(views, augment(x, torch.Generator().manual_seed(1)))


def test_each_step_does_what_it_says() -> None:
    x = images()
    torch.testing.assert_close(ViewAugment(**NONE)(x), x, atol=1e-5, rtol=0)  # the identity crop resamples exactly
    torch.testing.assert_close(ViewAugment(**{**NONE, "flip": 1.0})(x), x.flip(-1), atol=1e-5, rtol=0)
    grey = ViewAugment(**{**NONE, "grayscale": 1.0})(x)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    half = ViewAugment(**{**NONE, "crop_scale": (0.25, 0.25)})(x)  # a quarter of the area, resized up: smoother
    assert half.diff(dim=-1).abs().mean() < x.diff(dim=-1).abs().mean()
    one_channel = ViewAugment(grayscale=1.0)(images(channels=1))  # colour steps skip one-channel images
    assert one_channel.shape == (6, 1, 16, 16)


def test_a_hue_rotation_keeps_luminance_and_a_full_turn_is_the_identity() -> None:
    y = (images() + 1) / 2
    turned = rotate_hue(y, torch.full((6,), 1.0))
    torch.testing.assert_close(gray(turned), gray(y), atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate_hue(y, torch.full((6,), 2 * torch.pi)), y, atol=1e-5, rtol=0)


def test_bad_settings_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"crop_scale must satisfy 0 < min <= max <= 1, got \(0.5, 1.5\)"):
        ViewAugment(crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="flip is a probability in \\[0, 1\\], got 2"):
        ViewAugment(flip=2)


def test_random_crops_cut_each_image_on_the_stride_grid() -> None:
    x = images(64)
    crops = random_crops(x, 8, stride=4, generator=torch.Generator().manual_seed(0))
    assert crops.shape == (64, 3, 8, 8)
    offsets = set()
    for image, crop in zip(x, crops, strict=True):
        grid = [(i, j) for i in range(0, 9, 4) for j in range(0, 9, 4)]
        found = [(i, j) for i, j in grid if torch.equal(image[:, i:i + 8, j:j + 8], crop)]
        assert len(found) == 1  # every crop is a slice of its own image at a multiple of the stride
        offsets.add(found[0])
    assert len(offsets) == 9  # each image its own offset: all 3x3 grid positions come up in 64 draws
    with pytest.raises(ValueError, match="crop size 6 .* multiple of the stride 4"):
        random_crops(x, 6, stride=4)
    with pytest.raises(ValueError, match="crop size 32 must be at most the image side 16"):
        random_crops(x, 32)
