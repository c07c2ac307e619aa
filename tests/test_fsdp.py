"""trainer=fsdp: FSDP2 (torch's fully_shard) through Lightning, on two CPU processes (gloo). The U-Net's blocks and
its EMA copy's are sharded, image logging runs on every rank, the checkpoint is one full file that load_run reads
and -r resumes; a model FSDP cannot shard is refused before anything is written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixelforge.cli import main
from pixelforge.runs import load_run

REPO = Path(__file__).resolve().parents[1]
FSDP = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy.param_dtype=null",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0",
        "callbacks.progress_bar=null"]
DDPM = ["experiment=ddpm_mnist5k", "model.ema.decay=0.5", "data.batch_size=8", "model.log_sampler.steps=2",
        "callbacks.image_logger.every_n_steps=2", "callbacks.image_logger.increase_log_steps=false"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["experiment=ddpm_mnist5k", "model.ema=null", "trainer.strategy.wrap=[torch.nn.LSTM]"],
     r"trainer.strategy.wrap names \['LSTM'\], but the model has none of them; its networks hold \[.*'ResBlock'"),
    (["experiment=classifier_cnn_digits"], "trainer=fsdp shards diffusion models .* ImageClassifier is not one"),
])
def test_a_model_fsdp_cannot_shard_is_refused_before_anything_is_written(tmp_path: Path, capsys, overrides,
                                                                         message) -> None:
    assert main(["-t", "-l", str(tmp_path), *FSDP, *overrides]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def train(*args: str) -> str:
    result = subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_two_cpu_processes_train_a_sharded_unet_and_resume(tmp_path: Path) -> None:
    out = train("-t", "-l", str(tmp_path), *FSDP, *DDPM, "trainer.max_steps=2")
    assert "FSDPStrategy" in out and "FSDPUNetModel" in out and "test/loss" in out  # the U-Net was sharded
    (run_dir,) = tmp_path.iterdir()
    assert list((run_dir / "images" / "train").glob("samples_gs-000002_*.png"))  # drawn on both ranks, written once
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    _, model = load_run(run_dir)  # one full file: every weight whole, the EMA copy's too
    state = checkpoint["state_dict"]
    assert checkpoint["global_step"] == 2
    assert all(state[k].shape == v.shape for k, v in model.state_dict().items())
    assert int(state["ema.num_updates"]) == 2  # averaged on both ranks, shard by shard: behind the live weights
    # (the U-Net's zero-initialised output keeps most gradients zero for the first steps, so only the weights that
    # weight decay or the output's gradient moved differ; every one of them lags behind in the average)
    averaged = [k for k in state if k.startswith("unet.") and not torch.equal(state[k], state[f"ema.module.{k}"])]
    assert any(k.startswith("unet.input_blocks.") for k in averaged) and "unet.out.2.weight" in averaged
    train("-r", str(run_dir), "-t", "trainer.max_steps=3")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
