"""FID/KID: zero for a set against itself, growing with added noise, and the closed form for Gaussians; the
classifier's conditional accuracy and its grid of misread samples; the conditions samples are asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelforge.data.shapes import VALUES, ShapesDataset
from pixelforge.metrics.fid import cached_real_features, fid, frechet_distance, kid
from pixelforge.metrics.generation import conditional_accuracy, dataset_conditions, save_misreads
from pixelforge.utils.images import caption_images


def test_fid_is_zero_on_itself_and_grows_with_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(2000, 8, generator=generator)
    assert abs(fid(real, real)) < 1e-6
    scores = [fid(real, real + s * torch.randn(2000, 8, generator=generator)) for s in (0.1, 0.5, 1.0)]
    assert scores[0] < scores[1] < scores[2]
    kids = [kid(real, real + s * torch.randn(2000, 8, generator=generator), subsets=5)[0] for s in (0.0, 1.0)]
    assert abs(kids[0]) < 0.01 < kids[1]


def test_kid_std_reflects_the_sample_size() -> None:
    # With as many samples as the requested subset size, subsets must still differ, or the std is zero by construction.
    generator = torch.Generator().manual_seed(0)
    real, fake = torch.randn(500, 8, generator=generator), torch.randn(500, 8, generator=generator) + 0.5
    mean, std = kid(real, fake, subset_size=500)
    assert mean > 0 and std > 0.01 * mean


def test_kid_names_the_sizes_when_too_few_features() -> None:
    with pytest.raises(ValueError, match="at least 4 real and 4 generated features, got 3 and 10"):
        kid(torch.randn(3, 8), torch.randn(10, 8))


def test_frechet_distance_matches_gaussian_closed_form() -> None:
    # For diagonal covariances: ||mu1-mu2||^2 + sum (s1 + s2 - 2 sqrt(s1 s2))
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, -1.0])
    s1, s2 = np.array([1.0, 4.0]), np.array([9.0, 1.0])
    expected = 1 + 4 + (1 + 9 - 2 * 3) + (4 + 1 - 2 * 2)
    assert abs(frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) - expected) < 1e-9


def test_real_features_are_cached(tmp_path) -> None:
    calls = []

    class Extractor(torch.nn.Module):
        name = "toy"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            return x.flatten(1)

    images = [torch.ones(2, 1, 2, 2), torch.zeros(3, 1, 2, 2)]
    first = cached_real_features(Extractor(), "data|test", images, tmp_path)
    second = cached_real_features(Extractor(), "data|test", images, tmp_path)
    assert torch.equal(first, second) and first.shape == (5, 4) and calls == [2, 3]


def test_conditional_accuracy_per_key_and_jointly() -> None:
    class Judge(torch.nn.Module):
        def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"shape": x[:, 0, 0, 0].long(), "color": x[:, 0, 0, 1].long()}

    images = torch.tensor([[0, 1], [1, 1], [2, 0], [0, 0]], dtype=torch.float).view(4, 1, 1, 2)
    wanted = torch.tensor([[0, 1], [1, 0], [2, 0], [1, 0]])
    result = conditional_accuracy(Judge(), images, wanted, ["shape", "color"])
    assert result == {"cond_acc/shape": 0.75, "cond_acc/color": 0.75, "cond_acc": 0.5}


def test_the_misread_grid_shows_only_the_samples_read_otherwise(tmp_path: Path) -> None:
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    wanted = torch.tensor([[0, 1], [1, 0], [2, 0], [1, 0], [0, 2]])
    predicted = wanted.clone()
    save_misreads(images, predicted, wanted, ["shape", "color"], ["p"] * 5, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    predicted[1, 0], predicted[3, 1] = 2, 1
    save_misreads(images, predicted, wanted, ["shape", "color"], ["p"] * 5, tmp_path / "two.png", VALUES)
    one = caption_images(images[:1], ["x"])
    assert Image.open(tmp_path / "two.png").size[0] < 3 * one.shape[-1], "two tiles, not five"


def test_a_whole_split_asks_every_seed_for_the_same_captions_once_each() -> None:
    dataset = ShapesDataset("heldout", image_size=32, num_samples=40)
    captions = sorted(dataset[i]["caption"] for i in range(len(dataset)))
    draws = {seed: dataset_conditions(dataset, len(dataset), ["shape"], "caption", seed) for seed in (0, 1)}
    for labels, prompts in draws.values():
        assert sorted(prompts) == captions
        assert labels.shape == (len(dataset),)
    assert draws[0][1] != draws[1][1]  # in another order: each seed pairs them with other noise
    _, prompts = dataset_conditions(dataset, 2 * len(dataset) + 5, [], "caption", seed=0)
    assert sorted(prompts[:len(dataset)]) == captions and len(prompts) == 2 * len(dataset) + 5


def test_drawing_shapes_conditions_renders_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The labels and captions of drawn shapes items are those of the rendered items, read without rendering."""
    dataset = ShapesDataset("heldout", image_size=32, num_samples=40)
    items = [dataset[i] for i in range(len(dataset))]
    monkeypatch.setattr(ShapesDataset, "_render", lambda *_: pytest.fail("rendered an image to read its labels"))
    labels, prompts = dataset_conditions(dataset, len(dataset), ["shape", "size"], "caption", seed=3)
    order = [next(i for i, item in enumerate(items) if item["caption"] == p) for p in prompts]
    assert labels.tolist() == [[items[i]["shape"], items[i]["size"]] for i in order]
