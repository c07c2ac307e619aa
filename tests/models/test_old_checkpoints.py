"""Runs written by the code before the conditioner reshape (tests/fixtures/old_runs, made by
tests/fixtures/make_old_runs.py) still load, and give the same outputs from the same inputs and seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pixelforge.runs import load_run

FIXTURES = Path(__file__).parents[1] / "fixtures" / "old_runs"
NAMES = ["autoencoder_kl_shapes", "ddpm_mnist5k_cond", "ldm_shapes_txt2img"]


def outputs(name: str, model, inputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """What each fixture computes, from fixed inputs (``inputs``, or drawn from seed 0) and seeds."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if name == "autoencoder_kl_shapes":
            x = inputs["input"] if inputs else torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1
            posterior = model.encode(x)
            return {"input": x, "mean": posterior.mean, "reconstruction": model.decode(posterior.mean)}
        if name == "ddpm_mnist5k_cond":
            labels = torch.tensor([0, 3, 7])
            return {"labels": labels, "samples": model.sample(labels=labels, sampler="ddim", steps=3, scale=2.0,
                                                              generator=generator)}
        prompts = ["a large red circle in the center", "a small blue square in the top left"]
        return {"samples": model.sample(conditions={"caption": prompts}, sampler="dpmpp", steps=3, scale=3.0,
                                        generator=generator)}


def load_fixture(name: str, tmp_path: Path):
    """The fixture's model; the LDM's first stage is pointed at the fixture beside it, wherever the repo lies."""
    cfg = OmegaConf.load(FIXTURES / name / "configs" / "config.yaml")
    if cfg.model.get("first_stage"):
        cfg.model.first_stage.run = str(FIXTURES / "autoencoder_kl_shapes")
    config = tmp_path / "config.yaml"
    OmegaConf.save(cfg, config)
    return load_run(FIXTURES / name, config)[1]


@pytest.mark.parametrize("name", NAMES)
def test_an_old_run_loads_and_gives_the_same_outputs(name: str, tmp_path: Path) -> None:
    expected = torch.load(FIXTURES / name / "expected.pt", weights_only=True)
    got = outputs(name, load_fixture(name, tmp_path), expected)
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-4, msg=f"{name}: {key}")
