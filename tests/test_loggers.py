"""Loggers besides TensorBoard as config choices: CSV beside it, wandb offline and MLflow on a file store, each of
the last two continuing its own run when the run is resumed with -r."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pixelforge.cli import compose_config, main, parse
from pixelforge.train import run

TINY = ["-t", "--no-test", "experiment=classifier_cnn_digits", "callbacks.progress_bar=null",
        "callbacks.model_summary=null", "trainer.max_steps=2", "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1"]


def train(logdir: Path, *overrides: str) -> Path:
    run(compose_config(*parse([*TINY, "-l", str(logdir), *overrides])))
    (run_dir,) = logdir.iterdir()
    return run_dir


def test_csv_beside_tensorboard(tmp_path: Path) -> None:
    run_dir = train(tmp_path, "logger=[default,csv]")
    assert "train/loss" in (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_wandb_runs_offline_and_a_resumed_run_continues_the_same_wandb_run(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    run_dir = train(tmp_path, "logger=wandb")
    run_id = OmegaConf.load(run_dir / "configs" / "config.yaml").logger.wandb.id
    assert run_id and [p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")] == [run_id]
    assert main(["-r", str(run_dir), "-t", "--no-test", "trainer.max_steps=4"]) == 0
    assert {p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")} == {run_id}


def test_mlflow_logs_to_a_file_store_and_a_resumed_run_continues_the_same_mlflow_run(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    run_dir = train(tmp_path, "logger=mlflow")
    run_id = OmegaConf.load(run_dir / "configs" / "config.yaml").logger.mlflow.run_id
    assert main(["-r", str(run_dir), "-t", "--no-test", "trainer.max_steps=4"]) == 0
    client = mlflow.tracking.MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss_step")]
    assert steps and max(steps) >= 2 and min(steps) < 2  # both starts logged into one MLflow run
