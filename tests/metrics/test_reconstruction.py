"""Reconstruction metrics against their definitions, and the dataset-level evaluation of a (denoising) model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pixelforge.data.shapes import ShapesDataset
from pixelforge.metrics.reconstruction import evaluate_reconstructions, mse, psnr, ssim


def test_psnr_matches_its_formula_and_ssim_is_one_only_for_equal_images() -> None:
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    shifted = x + 0.1
    assert torch.allclose(mse(x, shifted), torch.full((3,), 0.01), atol=1e-6)
    assert torch.allclose(psnr(x, shifted), torch.full((3,), 10 * math.log10(4 / 0.01)), atol=1e-3)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-5)
    noisy = [ssim(x, x + s * torch.randn_like(x)).mean().item() for s in (0.05, 0.2, 0.8)]
    assert 1 > noisy[0] > noisy[1] > noisy[2]
    small = torch.rand(2, 1, 8, 8) * 2 - 1  # smaller than the 11x11 window
    assert torch.allclose(ssim(small, small), torch.ones(2), atol=1e-5)


def test_ssim_under_bf16_autocast_is_the_float32_ssim() -> None:
    """A bf16 run validates under autocast; its SSIM must not be filtered in bf16 (it read 0.82 for 0.95)."""
    images = ShapesDataset("test", num_samples=8, image_size=32)
    x = torch.stack([images[i]["image"] for i in range(8)])
    y = x + 0.02 * torch.randn_like(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = ssim(x, y)
    assert torch.allclose(mixed, ssim(x, y), atol=1e-5)


class Halver(nn.Module):
    """A 'denoiser' that halves its input and corrupts by adding a constant: every score is known in closed form."""

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return x / 2

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x + 0.2


def test_evaluate_reconstructions_reports_model_and_input_scores() -> None:
    images = [{"image": torch.full((1, 4, 4), v)} for v in (0.2, -0.4, 0.6)]
    clean = evaluate_reconstructions(Halver(), images, batch_size=2)
    assert clean["mse"] == pytest.approx(sum((v / 2) ** 2 for v in (0.2, -0.4, 0.6)) / 3)
    assert set(clean) == {"mse", "psnr", "ssim"}
    corrupted = evaluate_reconstructions(Halver(), images, batch_size=2, corrupted=True)
    assert corrupted["input_mse"] == pytest.approx(0.04)
    assert corrupted["input_psnr"] == pytest.approx(10 * math.log10(4 / 0.04), rel=1e-4)
    assert corrupted["mse"] == pytest.approx(sum((v - (v + 0.2) / 2) ** 2 for v in (0.2, -0.4, 0.6)) / 3)


class SignJudge(nn.Module):
    """Labels an image 1 where its mean is positive."""

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"label": (images.mean((1, 2, 3)) > 0).long(), "unused": torch.zeros(len(images), dtype=torch.long)}


def test_judged_reconstructions_count_the_labels_a_classifier_still_sees() -> None:
    values, labels = (0.2, -0.4, 0.6, -0.1), (1, 0, 0, 1)  # judged on reconstructions: 1, 0, 1, 0
    images = [{"image": torch.full((1, 4, 4), v), "label": torch.tensor(y)}
              for v, y in zip(values, labels, strict=True)]
    scores = evaluate_reconstructions(Halver(), images, batch_size=3, judge=SignJudge())
    assert scores["rec_acc/label"] == pytest.approx(0.5) and scores["rec_acc"] == pytest.approx(0.5)
    assert "rec_acc/unused" not in scores
    with pytest.raises(ValueError, match="none of the dataset's keys"):
        evaluate_reconstructions(Halver(), [{"image": torch.zeros(1, 4, 4)}], judge=SignJudge())


class Shifter(nn.Module):
    """Reconstructs an image moved three pixels right: the shapes' boxes no longer fit their captions."""

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, 3, dims=-1)


def test_shapes_reconstructions_report_the_strict_shape_fit_they_allow() -> None:
    dataset = ShapesDataset("heldout", image_size=32, num_samples=12)
    exact = evaluate_reconstructions(Halver(), dataset, batch_size=5)  # halving keeps every foreground pixel bright
    assert exact["shape_fit"] == 1 and exact["shape_iou"] == pytest.approx(1)
    moved = evaluate_reconstructions(Shifter(), dataset, batch_size=5)
    assert moved["shape_iou"] < 0.85 and moved["shape_fit"] < 0.5
