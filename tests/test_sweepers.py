"""Hydra's sweeper and launcher plugins through main.py -m: an Optuna search whose trials return their best
validation loss, and the submitit launcher running jobs as processes of their own (submitit_local, as
submitit_slurm would on a cluster). Each job keeps the run-directory layout under the multirun's folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pixelforge.cli import main

TINY = ["-m", "-t", "--no-test", "experiment=classifier_cnn_digits", "callbacks.progress_bar=null",
        "callbacks.model_summary=null", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
        "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0"]


def results(logdir: Path) -> tuple[Path, list]:
    (parent,) = (logdir / "multirun").iterdir()
    jobs = sorted((p for p in parent.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return parent, [OmegaConf.load(job / "result.yaml") for job in jobs]


def test_optuna_trials_return_their_best_validation_loss(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    assert main([*TINY, "-l", str(tmp_path), "hparams_search=classifier_optuna", "hydra.sweeper.n_trials=2"]) == 0
    parent, trials = results(tmp_path)
    assert len(trials) == 2 and all(t.exit_code == 0 and t.monitor == "val/loss" for t in trials)
    lrs = [OmegaConf.load(Path(t.run_dir) / "configs" / "config.yaml").model.optimizer.lr for t in trials]
    assert lrs[0] != lrs[1] and all(1e-4 <= lr <= 1e-2 for lr in lrs)  # drawn from the search space
    best = OmegaConf.load(parent / "optimization_results.yaml").best_value
    assert best == min(t.best for t in trials)


@pytest.mark.slow
def test_submitit_local_runs_each_job_in_its_own_process(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    assert main([*TINY, "-l", str(tmp_path), "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                 "data.batch_size=8,16"]) == 0
    parent, jobs = results(tmp_path)
    assert [j.exit_code for j in jobs] == [0, 0]
    sizes = [OmegaConf.load(Path(j.run_dir) / "configs" / "config.yaml").data.batch_size for j in jobs]
    assert sizes == [8, 16]
    assert len([p for p in (parent / ".submitit").iterdir() if p.name.isdigit()]) == 2  # two processes
