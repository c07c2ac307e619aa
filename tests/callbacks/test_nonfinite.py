"""NonFiniteGuard: every model family stops at a non-finite loss with the last finite weights in last.ckpt."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pixelforge.cli import main
from pixelforge.runs import FINISHED

QUICK = ["trainer.max_epochs=3", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
         "trainer.num_sanity_val_steps=0", "data.batch_size=8", "data.eval_batch_size=8",
         "callbacks.progress_bar=null", "callbacks.image_logger=null", "callbacks.model_summary=null",
         "trainer.accelerator=cpu", "trainer.devices=1"]
POISON = ["+callbacks.fault._target_=fault_injection.PoisonBatch", "+callbacks.fault.at=2"]
FAMILIES = {  # automatic optimisation, except the KL first stage (manual, with its discriminator)
    "autoencoder": ["experiment=ae_mnist5k", "data=digits", "data.image_size=32"],
    "vae": ["experiment=vae_mnist5k", "data=digits", "data.image_size=32"],
    "ddpm": ["experiment=ddpm_mnist5k", "data=digits", "model.unet.model_channels=8", "model.unet.num_groups=4"],
    "first_stage": ["experiment=autoencoder_kl_mnist5k", "data=digits", "model.ddconfig.ch=8",
                    "model.ddconfig.num_groups=4", "model.disc_start=0"],
}


def assert_stopped_with_finite_weights(logdir: Path, message: str) -> Path:
    (run_dir,) = logdir.iterdir()
    assert "non-finite" in message and f"python main.py -t -r {run_dir}" in message, message
    assert not (run_dir / FINISHED).exists()  # a diverged run is not finished: no later stage reuses it
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    floats = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert floats and all(torch.isfinite(v).all() for v in floats)
    return run_dir


def test_classifier_with_a_huge_lr_stops_with_finite_weights(tmp_path: Path, capsys) -> None:
    argv = ["-t", "-l", str(tmp_path), "experiment=classifier_cnn_digits", "model.optimizer.lr=1e6", *QUICK]
    assert main(argv) == 1
    assert_stopped_with_finite_weights(tmp_path, capsys.readouterr().err)


def test_the_hinted_resume_continues_from_the_last_finite_weights(tmp_path: Path, capsys) -> None:
    assert main(["-t", "-l", str(tmp_path), "experiment=classifier_cnn_digits", *QUICK, *POISON]) == 1
    message = capsys.readouterr().err
    run_dir = assert_stopped_with_finite_weights(tmp_path, message)
    hint = re.search(r"python main.py (-t -r \S+ .*)$", message.strip()).group(1).split()
    assert hint[-1] == "model.base_learning_rate=1e-06"  # a tenth of the configured per-sample rate
    assert main([*hint, "callbacks.fault=null"]) == 0
    assert (run_dir / FINISHED).exists() and torch.load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 12


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_stops_at_a_nan_batch_with_finite_weights(family: str, tmp_path: Path, capsys) -> None:
    assert main(["-t", "-l", str(tmp_path), *FAMILIES[family], *QUICK, *POISON]) == 1
    assert_stopped_with_finite_weights(tmp_path, capsys.readouterr().err)
