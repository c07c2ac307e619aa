"""Every experiment config composes and trains for two steps, downloadable datasets replaced by tiny stand-ins."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fake_data import write_fake_dataset

from pixelforge.cli import compose_config, experiments, parse
from pixelforge.run import run

SMOKE = ["trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
         "trainer.num_sanity_val_steps=0", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true",
         "trainer.benchmark=false", "data.batch_size=4", "data.eval_batch_size=4", "data.num_workers=0",
         "data.pin_memory=false", "callbacks.image_logger.every_n_steps=1", "callbacks.progress_bar=null"]


@pytest.mark.parametrize("experiment", experiments())
def test_experiment_trains_two_steps(experiment: str, tmp_path: Path, no_md5: None) -> None:
    overrides = [f"experiment={experiment}", *SMOKE]
    cfg = compose_config(*parse(overrides))
    target = cfg.data.dataset._target_
    if target.endswith("TorchvisionDataset"):
        write_fake_dataset(cfg.data.dataset.name, tmp_path / "data")
        overrides.append(f"paths.data_dir={tmp_path / 'data'}")
    elif "root" in cfg.data.dataset:
        pytest.fail(f"{experiment}: add a stand-in for {target} to tests/conftest.py")
    if "log_sampler" in cfg.model:
        overrides.append("model.log_sampler.steps=2")
    metrics = run(compose_config(*parse(["-t", "-l", str(tmp_path / "logs"), *overrides])))
    (run_dir,) = (tmp_path / "logs").iterdir()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert list((run_dir / "images" / "train").glob("*.png"))
    assert metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
