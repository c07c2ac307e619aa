"""The benchmark's diffusers peer: the recipe's model around a UNet2DConditionModel of our U-Net's architecture,
and diffusers' schedulers on the recipe's schedule, visiting our samplers' timesteps."""

from __future__ import annotations

import pytest
import torch

from pixelforge.benchmark.peers import diffusers_scheduler, diffusers_unet, with_unet
from pixelforge.benchmark.recipes import Subject, recipe
from pixelforge.benchmark.steps import forward
from pixelforge.benchmark.timing import count_params
from pixelforge.diffusion.samplers import build_sampler

diffusers = pytest.importorskip("diffusers")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def subject() -> Subject:
    return recipe("ldm_shapes_txt2img", ["data.batch_size=2"], CPU)


def test_diffusers_peer_is_our_architecture(subject: Subject) -> None:
    peer = with_unet(subject.model, diffusers_unet(diffusers, subject.model))
    ours, theirs = count_params(subject.model.unet), count_params(peer.unet)
    assert abs(theirs - ours) / ours < 1e-3  # only attention's q/k/v biases differ
    assert peer.unet.net.config.in_channels == subject.model.unet.config["in_channels"] == 6
    assert peer.unet.net.config.cross_attention_dim == subject.model.unet.context_dim
    assert torch.isfinite(peer.training_step(subject.batch, 0))
    shapes = [forward(model, subject.batch, "fp32", CPU)().shape for model in (subject.model, peer)]
    assert shapes[0] == shapes[1] == subject.model.sample_shape(2)


@pytest.mark.parametrize("name", ["dpmpp", "ddim"])
def test_diffusers_scheduler_follows_our_sampler(subject: Subject, name: str) -> None:
    model = subject.model
    sampler = build_sampler(name, model.schedule, model.prediction_type, 5, **model.sampling)
    scheduler = diffusers_scheduler(diffusers, name, model, sampler)
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == sampler.timesteps().tolist()
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.rescale_betas_zero_snr
