"""Recipes built on other runs: main.py trains a first stage (and a CLIP for the default recipe's text encoder)
when no finished run exists, and reuses it when one does."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pixelforge.cli import compose_config, main, parse, run_plan
from pixelforge.models.clip import frozen_text_tower
from pixelforge.models.first_stage import FirstStageModel
from pixelforge.runs import FINISHED, finished_runs
from pixelforge.stages import plan, single_process

QUIET = ["trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null",
         "trainer.accelerator=cpu", "trainer.devices=1", "data.image_size=16", "data.batch_size=8",
         "data.dataset.num_samples={train: 16, val: 8, test: 8, heldout: 8}"]
TINY_FIRST = ["model.ddconfig.ch=8", "model.ddconfig.ch_mult=[1,2]", "model.ddconfig.num_groups=4",
              "trainer.max_steps=2", *QUIET]
TINY_UNET = ["model.unet.model_channels=16", "model.unet.num_groups=8", "model.unet.num_res_blocks=1",
             "model.log_sampler.steps=2", "trainer.max_steps=1", *QUIET]
TINY_LDM = ["experiment=ldm_shapes_txt2img", "model.conditioner.caption.encoder.dim=16",
            "model.conditioner.caption.encoder.depth=1", *TINY_UNET]
TINY_CLIP = ["model.image_encoder.channels=[8,8]", "model.image_encoder.hidden_dim=16", "model.text_encoder.dim=16",
             "model.text_encoder.depth=1", "model.text_encoder.heads=2", "model.embed_dim=16", "trainer.max_steps=2",
             *QUIET]


def compose_tiny_first(overrides: list[str]):
    """``main.py``'s composition of the first stage, made tiny for the test."""
    return compose_config(*parse([*overrides, *TINY_FIRST]))


def compose_tiny_stage(overrides: list[str]):
    """``main.py``'s composition of a planned first stage or CLIP, made tiny for the test."""
    return compose_config(*parse([*overrides, *(TINY_CLIP if "experiment=clip_shapes" in overrides else TINY_FIRST)]))


def tiny_ldm(logdir: Path, *extra: str):
    return compose_config(*parse(["-t", "-l", str(logdir), *TINY_LDM, *extra]))


def test_trains_the_first_stage_when_missing_then_reuses_it(tmp_path: Path) -> None:
    cfg = tiny_ldm(tmp_path)
    assert finished_runs(tmp_path, "autoencoder_kl_shapes") == []
    steps = plan(cfg, compose_tiny_first)
    assert len(steps) == 2 and steps[0].experiment_name == "autoencoder_kl_shapes" and steps[1] is cfg
    assert run_plan(steps) == 0
    (first,) = finished_runs(tmp_path, "autoencoder_kl_shapes")
    assert cfg.model.first_stage.run == str(first) and (first / FINISHED).is_file()
    assert OmegaConf.load(first / "configs" / "config.yaml").seed == cfg.seed  # trained as the LDM would run
    assert (Path(cfg.run_dir) / FINISHED).is_file()  # then the LDM trained on it

    again = tiny_ldm(tmp_path)
    assert plan(again, lambda overrides: pytest.fail("must reuse, not train")) == [again]
    assert again.model.first_stage.run == str(first)


def test_the_default_recipe_trains_its_first_stage_and_clip_first_then_reuses_both(tmp_path: Path) -> None:
    cfg = compose_config(*parse(["-t", "-l", str(tmp_path), *TINY_UNET]))  # no experiment=: the default
    steps = plan(cfg, compose_tiny_stage)
    assert [step.experiment_name for step in steps] == ["autoencoder_kl_shapes", "clip_shapes", "ldm_shapes_clip"]
    assert run_plan(steps) == 0
    (first,), (clip,) = finished_runs(tmp_path, "autoencoder_kl_shapes"), finished_runs(tmp_path, "clip_shapes")
    saved = OmegaConf.load(Path(cfg.run_dir) / "configs" / "config.yaml")
    assert saved.model.first_stage.run == str(first) and saved.model.conditioner.caption.encoder.run == str(clip)
    assert (Path(cfg.run_dir) / FINISHED).is_file()

    again = compose_config(*parse(["-t", "-l", str(tmp_path), *TINY_UNET]))
    assert plan(again, lambda overrides: pytest.fail("must reuse, not train")) == [again]
    assert again.model.conditioner.caption.encoder.run == str(clip)


def test_a_clip_text_encoder_without_a_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs a CLIP run directory .*experiment 'clip_shapes' is turned into"):
        frozen_text_tower(experiment="clip_shapes")
    testing = compose_config(*parse(["-l", str(tmp_path), f"model.first_stage.run={tmp_path}"]))  # no -t
    with pytest.raises(ValueError, match=r"no finished clip_shapes run .* set model.conditioner.caption.encoder.run="):
        plan(testing, lambda overrides: pytest.fail("nothing trains without -t"))


def test_main_trains_the_ldm_on_a_reused_first_stage(tmp_path: Path) -> None:
    run_plan(plan(tiny_ldm(tmp_path), compose_tiny_first)[:1])
    assert main(["-t", "--no-test", "-l", str(tmp_path), *TINY_LDM]) == 0
    (ldm,) = tmp_path.glob("*_ldm_shapes_txt2img")
    saved = OmegaConf.load(ldm / "configs" / "config.yaml")
    assert saved.model.first_stage.run == str(finished_runs(tmp_path, "autoencoder_kl_shapes")[0])
    assert (ldm / FINISHED).is_file() and (ldm / "checkpoints" / "last.ckpt").is_file()


def test_a_first_stage_named_with_n_and_f_is_reused(tmp_path: Path) -> None:
    first = compose_tiny_first(["-t", "-l", str(tmp_path), "experiment=autoencoder_kl_shapes", "-n", "mine",
                                "-f", "_v2"])
    assert run_plan([first]) == 0
    assert Path(first.run_dir).name.endswith("_mine_v2")
    cfg = tiny_ldm(tmp_path)
    assert plan(cfg, lambda overrides: pytest.fail("must reuse, not train")) == [cfg]
    assert cfg.model.first_stage.run == first.run_dir


def test_a_run_of_another_experiment_with_a_matching_suffix_is_not_reused(tmp_path: Path) -> None:
    other = tmp_path / "2026-01-01T00-00-00_my_autoencoder_kl_shapes"  # -n my_autoencoder_kl_shapes of the VQ
    (other / "checkpoints").mkdir(parents=True)
    (other / "configs").mkdir()
    (other / "checkpoints" / "last.ckpt").write_bytes(b"")
    (other / FINISHED).write_text("global_step 2\n")
    (other / "configs" / "config.yaml").write_text("experiment_name: autoencoder_vq_shapes\n"
                                                    "name: my_autoencoder_kl_shapes\n")
    assert finished_runs(tmp_path, "autoencoder_kl_shapes") == []
    assert finished_runs(tmp_path, "autoencoder_vq_shapes") == [other]
    assert len(plan(tiny_ldm(tmp_path), compose_tiny_first)) == 2  # trains its own first stage


def test_an_error_while_training_the_first_stage_is_a_traceback(tmp_path: Path, monkeypatch) -> None:
    def broken(self, batch, batch_idx):
        raise ValueError("boom in the first stage's training step")

    monkeypatch.setattr(FirstStageModel, "training_step", broken)
    steps = plan(tiny_ldm(tmp_path), compose_tiny_first)
    with pytest.raises(ValueError, match="boom"):  # not main.py's exit 2 for configs
        run_plan(steps)
    first = Path(steps[0].run_dir)
    assert (first / "checkpoints" / "last.ckpt").is_file() and not (first / FINISHED).exists()
    assert list(tmp_path.iterdir()) == [first]  # the LDM never started


def test_sigterm_during_the_first_stage_saves_it_and_stops_the_plan(tmp_path: Path, monkeypatch, capsys) -> None:
    step = FirstStageModel.training_step

    def terminated(self, batch, batch_idx):
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning stops after this batch
        return step(self, batch, batch_idx)

    monkeypatch.setattr(FirstStageModel, "training_step", terminated)
    steps = plan(tiny_ldm(tmp_path), compose_tiny_first)
    assert run_plan(steps) == 128 + signal.SIGTERM
    first = Path(steps[0].run_dir)
    assert f"python main.py -t -r {first}" in capsys.readouterr().err
    assert (first / "checkpoints" / "last.ckpt").is_file() and list(tmp_path.iterdir()) == [first]


def test_unfinished_runs_are_not_reused_and_testing_needs_one(tmp_path: Path, capsys) -> None:
    unfinished = tmp_path / "2026-01-01T00-00-00_autoencoder_kl_shapes"
    (unfinished / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}}, unfinished / "checkpoints" / "last.ckpt")  # readable, but not finished
    assert finished_runs(tmp_path, "autoencoder_kl_shapes") == []
    assert main(["-l", str(tmp_path), "ckpt_path=" + str(unfinished / "checkpoints" / "last.ckpt"), *TINY_LDM]) == 2
    err = capsys.readouterr().err
    assert "no finished autoencoder_kl_shapes run" in err and "model.first_stage.run=<run directory>" in err


@pytest.mark.parametrize(("trainer", "expected"), [
    ({"accelerator": "cpu", "devices": 1}, True),
    ({"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, False),
    ({"accelerator": "gpu", "devices": [0, 1]}, False),
    ({"accelerator": "cpu", "devices": "auto"}, True),
])
def test_single_process(trainer: dict, expected: bool) -> None:
    assert single_process(OmegaConf.create({"trainer": trainer})) is expected
