"""Two-stage recipes: main.py trains the first stage when no finished run exists, and reuses it when one does."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pixelforge.cli import compose_config, main, parse
from pixelforge.runs import FINISHED
from pixelforge.stages import finished_runs, resolve_first_stage, single_process

QUIET = ["trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null",
         "trainer.accelerator=cpu", "trainer.devices=1", "data.image_size=16", "data.batch_size=8",
         "data.dataset.num_samples={train: 16, val: 8, test: 8, heldout: 8}"]
TINY_FIRST = ["model.ddconfig.ch=8", "model.ddconfig.ch_mult=[1,2]", "model.ddconfig.num_groups=4",
              "trainer.max_steps=2", *QUIET]
TINY_LDM = ["experiment=ldm_shapes_txt2img", "model.unet.model_channels=16", "model.unet.num_groups=8",
            "model.unet.num_res_blocks=1", "model.cond_stage.dim=16", "model.cond_stage.depth=1",
            "model.unet.context_dim=16", "model.log_sampler.steps=2", "trainer.max_steps=1", *QUIET]


def compose_tiny_first(overrides: list[str]):
    """``main.py``'s composition of the first stage, made tiny for the test."""
    return compose_config(*parse([*overrides, *TINY_FIRST]))


def test_trains_the_first_stage_when_missing_then_reuses_it(tmp_path: Path) -> None:
    cfg = compose_config(*parse(["-t", "-l", str(tmp_path), *TINY_LDM]))
    assert finished_runs(tmp_path, "autoencoder_kl_shapes") == []
    resolve_first_stage(cfg, compose_tiny_first)
    (first,) = finished_runs(tmp_path, "autoencoder_kl_shapes")
    assert cfg.model.first_stage.run == str(first) and (first / FINISHED).is_file()
    assert OmegaConf.load(first / "configs" / "config.yaml").seed == cfg.seed  # trained as the LDM would run

    again = compose_config(*parse(["-t", "-l", str(tmp_path), *TINY_LDM]))
    resolve_first_stage(again, lambda overrides: pytest.fail("must reuse, not train"))
    assert again.model.first_stage.run == str(first)


def test_main_trains_the_ldm_on_a_reused_first_stage(tmp_path: Path) -> None:
    resolve_first_stage(compose_config(*parse(["-t", "-l", str(tmp_path), *TINY_LDM])), compose_tiny_first)
    assert main(["-t", "--no-test", "-l", str(tmp_path), *TINY_LDM]) == 0
    (ldm,) = tmp_path.glob("*_ldm_shapes_txt2img")
    saved = OmegaConf.load(ldm / "configs" / "config.yaml")
    assert saved.model.first_stage.run == str(finished_runs(tmp_path, "autoencoder_kl_shapes")[0])
    assert (ldm / FINISHED).is_file() and (ldm / "checkpoints" / "last.ckpt").is_file()


def test_unfinished_runs_are_not_reused_and_testing_needs_one(tmp_path: Path, capsys) -> None:
    unfinished = tmp_path / "2026-01-01T00-00-00_autoencoder_kl_shapes"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert finished_runs(tmp_path, "autoencoder_kl_shapes") == []
    assert main(["-l", str(tmp_path), "ckpt_path=" + str(unfinished / "checkpoints" / "last.ckpt"), *TINY_LDM]) == 2
    assert "no finished autoencoder_kl_shapes run" in capsys.readouterr().err


@pytest.mark.parametrize(("trainer", "expected"), [
    ({"accelerator": "cpu", "devices": 1}, True),
    ({"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, False),
    ({"accelerator": "gpu", "devices": [0, 1]}, False),
    ({"accelerator": "cpu", "devices": "auto"}, True),
])
def test_single_process(trainer: dict, expected: bool) -> None:
    assert single_process(OmegaConf.create({"trainer": trainer})) is expected
