"""GAN losses against hand computations, gradient penalties on a linear critic, DiffAugment ops."""

from __future__ import annotations

import math

import pytest
import torch

from pixelforge.adversarial import diff_augment, discriminator_loss, generator_loss, gradient_penalty, r1_penalty
from pixelforge.adversarial.diffaugment import rand_cutout, rand_translation

REAL, FAKE = torch.tensor([2.0, -0.5]), torch.tensor([0.5, -3.0])


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_losses_match_hand_computation() -> None:
    bce = (softplus(-2.0) + softplus(0.5)) / 2 + (softplus(0.5) + softplus(-3.0)) / 2
    assert discriminator_loss(REAL, FAKE, "bce").item() == pytest.approx(bce, rel=1e-5)
    assert generator_loss(FAKE, "bce").item() == pytest.approx((softplus(-0.5) + softplus(3.0)) / 2, rel=1e-5)
    assert discriminator_loss(REAL, FAKE, "hinge").item() == pytest.approx((0 + 1.5) / 2 + (1.5 + 0) / 2)
    assert discriminator_loss(REAL, FAKE, "wasserstein").item() == pytest.approx(-1.25 - 0.75)
    for kind in ("hinge", "wasserstein"):
        assert generator_loss(FAKE, kind).item() == pytest.approx(1.25)
    with pytest.raises(ValueError, match="unknown GAN loss 'lsgan'.*hinge"):
        discriminator_loss(REAL, FAKE, "lsgan")


def test_gradient_penalties_of_a_linear_critic() -> None:
    """D(x) = w.x has gradient w everywhere: GP = lambda (||w|| - 1)^2, R1 = gamma/2 ||w||^2."""
    w = torch.tensor([3.0, 0.0, 4.0, 0.0]).view(1, 1, 2, 2)  # ||w|| = 5
    critic = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.randn(6, 1, 2, 2), torch.randn(6, 1, 2, 2)
    assert gradient_penalty(critic, real, fake, weight=10.0).item() == pytest.approx(10.0 * 16.0)
    real.requires_grad_(True)
    assert r1_penalty(critic(real), real, gamma=0.2).item() == pytest.approx(0.1 * 25.0)


def test_gradient_penalty_is_differentiable_in_the_critic() -> None:
    w = torch.tensor([0.6, 0.0], requires_grad=True)
    gp = gradient_penalty(lambda x: x @ w, torch.randn(4, 2), torch.randn(4, 2), weight=1.0)
    gp.backward()
    assert w.grad is not None and w.grad[0].item() == pytest.approx(2 * (0.6 - 1.0))  # d/dw (|w| - 1)^2


def test_diff_augment_keeps_shape_and_gradients() -> None:
    x = torch.rand(5, 3, 8, 8, requires_grad=True)
    out = diff_augment(x, "color,translation,cutout")
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(diff_augment(x, None), x)
    with pytest.raises(ValueError, match="unknown DiffAugment op.*'flip'.*cutout"):
        diff_augment(x, "color,flip")


def test_translation_shifts_and_cutout_blanks_a_square() -> None:
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3, 4] = 1.0
    moved = rand_translation(x, ratio=0.25)
    positions = moved.flatten(1).argmax(1)
    assert moved.flatten(1).sum(1).eq(1).all() and len(positions.unique()) > 5  # a shifted copy, not a blur
    cut = rand_cutout(torch.ones(64, 1, 8, 8), ratio=0.5)
    holes = (cut == 0).flatten(1).sum(1)
    assert holes.max() == 16 and holes.min() >= 4  # a 4x4 square, clipped at the border
