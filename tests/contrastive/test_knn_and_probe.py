"""The kNN monitor and the linear probe on features whose answer is known."""

from __future__ import annotations

import pytest
import torch

from pixelforge.contrastive.knn import knn_predict
from pixelforge.contrastive.probe import (
    accuracy,
    few_labels,
    fit_linear_probe,
    select_weight_decay,
    train_supervised,
)
from pixelforge.modules.cnn import SmallCNN


def clusters(n: int, classes: int = 4, dim: int = 16, spread: float = 0.1, seed: int = 0):
    """Points around ``classes`` random unit centres (the same for every seed), and their labels."""
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=torch.Generator().manual_seed(9)), 1)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    return centres[labels] + spread * torch.randn(n, dim, generator=generator) / dim ** 0.5, labels


def test_knn_votes_for_the_nearest_class() -> None:
    bank, bank_labels = clusters(200)
    queries, labels = clusters(100, seed=1)
    assert torch.equal(knn_predict(queries, bank, bank_labels, 4, k=20), labels)
    # k = 1 is the nearest neighbour by cosine similarity, chunked or not
    nearest = bank_labels[(torch.nn.functional.normalize(queries, dim=1)
                           @ torch.nn.functional.normalize(bank, dim=1).T).argmax(1)]
    assert torch.equal(knn_predict(queries, bank, bank_labels, 4, k=1, chunk=7), nearest)
    # weighted votes: two far neighbours of class 0 lose to one close neighbour of class 1 at a low temperature
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    assert knn_predict(torch.tensor([[1.0, 0.05]]), bank, torch.tensor([1, 0, 0]), 2, k=3, temperature=0.05) == 1
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn_predict(queries, bank, bank_labels, 4, k=0)


def test_the_linear_probe_separates_separable_features_and_few_labels_are_per_class() -> None:
    train, train_labels = clusters(400)
    test, test_labels = clusters(200, seed=1)
    probe = fit_linear_probe(train, train_labels, 4)
    assert accuracy(probe(test), test_labels) == 1.0
    index = few_labels(train_labels, 5, seed=3)
    assert torch.bincount(train_labels[index]).tolist() == [5, 5, 5, 5]
    assert torch.equal(index, few_labels(train_labels, 5, seed=3)) and not torch.equal(index, few_labels(
        train_labels, 5, seed=4))
    assert accuracy(fit_linear_probe(train[index], train_labels[index], 4)(test), test_labels) > 0.9
    with pytest.raises(ValueError, match="class 0 has 100 examples, fewer than 101"):
        few_labels(train_labels, 101)


def test_the_supervised_baseline_learns_its_few_images() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(8, 1, 16, 16)
    images[:4, :, :, :8] = 1  # class 0: bright left half, class 1: bright right half
    images[4:, :, :, 8:] = 1
    images = images * 2 - 1 + 0.1 * torch.randn(images.shape, generator=generator)
    labels = torch.tensor([0] * 4 + [1] * 4)
    model = train_supervised(SmallCNN(1, 16, [8, 16], 1, 32, 0.0, True), images, labels, 2, steps=60)
    with torch.no_grad():
        assert accuracy(model(images), labels) == 1.0


def test_the_penalty_is_chosen_on_validation_data() -> None:
    train, val = clusters(400), clusters(200, seed=1)
    assert select_weight_decay(train, val, 4, grid=(1e3, 0.0)) == 0.0  # a huge penalty flattens the probe
    assert select_weight_decay(train, val, 4, grid=(1e-4, 0.0)) == 1e-4  # equal accuracy: the stronger penalty
