"""Classifier-free guidance: one batched model call, the guidance formula, and every conditioning container."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pixelforge.diffusion.samplers import ClassifierFreeGuidance, build_sampler, concat_cond
from pixelforge.diffusion.schedule import NoiseSchedule


class Recorder:
    """A toy conditional denoiser, x·(1 + mean label) + t/1000, that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, Any]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        self.calls.append((x, t, cond))
        labels = cond["label"] if isinstance(cond, dict) else cond
        if isinstance(labels, list):
            labels = torch.tensor([float(len(text)) for text in labels])
        scale = 1 + (labels.float().reshape(len(x), -1).mean(1) if labels is not None else torch.zeros(len(x)))
        return x * scale.view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1) / 1000


X, T = torch.randn(3, 2, 4, 4), torch.tensor([10, 500, 999])


def test_scale_one_is_the_conditional_model() -> None:
    model = Recorder()
    labels = torch.tensor([1, 2, 3])
    out = ClassifierFreeGuidance(model, 1.0, torch.zeros(3, dtype=torch.long))(X, T, labels)
    assert len(model.calls) == 1 and model.calls[0][2] is labels
    torch.testing.assert_close(out, Recorder()(X, T, labels))


@pytest.mark.parametrize(("cond", "uncond"), [
    (torch.tensor([1, 2, 3]), torch.zeros(3, dtype=torch.long)),
    (torch.tensor([[1, 0], [2, 1], [3, 3]]), torch.zeros(3, 2, dtype=torch.long)),
    ({"label": torch.tensor([1, 2, 3])}, {"label": torch.zeros(3, dtype=torch.long)}),
    (["a cat", "two dogs", "x"], ["", "", ""]),
    (None, None),
])
def test_guidance_is_one_batched_call(cond: Any, uncond: Any) -> None:
    model, scale = Recorder(), 4.0
    out = ClassifierFreeGuidance(model, scale, uncond)(X, T, cond)
    assert len(model.calls) == 1
    x, t, both = model.calls[0]
    assert x.shape == (6, 2, 4, 4) and torch.equal(t, torch.cat([T, T]))
    assert type(both) is type(cond)
    expected_uncond, expected_cond = Recorder()(X, T, uncond), Recorder()(X, T, cond)
    torch.testing.assert_close(out, expected_uncond + scale * (expected_cond - expected_uncond))


@pytest.mark.parametrize("rescale", [0.0, 0.7, 1.0])
def test_guidance_rescale_matches_diffusers(rescale: float) -> None:
    pipeline = pytest.importorskip("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")
    labels, uncond, scale = torch.tensor([1, 2, 3]), torch.zeros(3, dtype=torch.long), 5.0
    out = ClassifierFreeGuidance(Recorder(), scale, uncond, rescale)(X, T, labels)
    plain = ClassifierFreeGuidance(Recorder(), scale, uncond)(X, T, labels)
    expected = pipeline.rescale_noise_cfg(plain, Recorder()(X, T, labels), guidance_rescale=rescale)
    torch.testing.assert_close(out, expected)
    if rescale == 1:  # fully rescaled: each sample's spread is the conditional prediction's
        torch.testing.assert_close(out.std((1, 2, 3)), Recorder()(X, T, labels).std((1, 2, 3)))
    if rescale == 0:
        assert torch.equal(out, plain)


def test_guidance_rescale_outside_zero_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"guidance rescale must lie in \[0, 1\].*got 1.5"):
        ClassifierFreeGuidance(Recorder(), 3.0, None, rescale=1.5)


def test_concat_cond_refuses_mismatched_types() -> None:
    with pytest.raises(TypeError, match="Tensor and list"):
        concat_cond(torch.zeros(2), ["a", "b"])


def test_guided_sampling_runs_every_sampler() -> None:
    schedule, noise = NoiseSchedule(), torch.randn(3, 2, 4, 4)
    model = Recorder()
    guided = ClassifierFreeGuidance(model, 2.0, torch.zeros(3, dtype=torch.long))
    for name in ("ddpm", "ddim", "dpmpp", "euler_a"):
        out = build_sampler(name, schedule, "eps", 5).sample(guided, noise, cond=torch.tensor([0, 1, 0]))
        assert out.shape == noise.shape and torch.isfinite(out).all()
    assert len(model.calls) == 20 and all(len(x) == 6 for x, _, _ in model.calls)
