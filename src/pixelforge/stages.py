"""Two-stage recipes: a latent-diffusion config names its first-stage experiment; reuse its newest finished run
under the log directory, or train it first."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, open_dict

from pixelforge.runs import FINISHED
from pixelforge.train import run

DEVICE_KEYS = ("accelerator", "devices", "precision")


def finished_runs(logdir: str | Path, experiment: str) -> list[Path]:
    """Run directories ``<logdir>/<time>_<experiment>`` whose training finished (oldest first)."""
    root = Path(logdir)
    if not root.is_dir():
        return []
    runs = [path for path in root.glob(f"*_{experiment}")
            if (path / FINISHED).is_file() and (path / "checkpoints" / "last.ckpt").is_file()]
    return sorted(runs, key=lambda path: path.name)


def single_process(cfg: DictConfig) -> bool:
    """Whether ``cfg.trainer`` runs in one process (a first stage can then be trained before the main run)."""
    trainer = cfg.trainer
    devices = trainer.get("devices", "auto")
    if "ddp" in str(trainer.get("strategy", "auto")) or int(trainer.get("num_nodes", 1)) > 1:
        return False
    if devices == "auto":
        return str(trainer.get("accelerator", "auto")) == "cpu" or torch.cuda.device_count() <= 1
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices) <= 1
    return int(devices) in (1, -1) and (int(devices) == 1 or torch.cuda.device_count() <= 1)


def first_stage_overrides(cfg: DictConfig, experiment: str) -> list[str]:
    """Overrides that train ``experiment`` as ``cfg`` would run: same log directory, seed and devices."""
    overrides = ["train=true", f"experiment={experiment}", f"logdir={cfg.logdir}", f"seed={cfg.seed}"]
    return overrides + [f"trainer.{key}={cfg.trainer[key]}" for key in DEVICE_KEYS if key in cfg.trainer]


def resolve_first_stage(cfg: DictConfig, compose: Callable[[list[str]], DictConfig]) -> None:
    """Point ``model.first_stage.run`` of ``cfg`` at a finished run of its ``experiment``, training one if none.

    Does nothing when the model has no first stage or already names a run or checkpoint. ``compose`` turns
    overrides into a config as ``main.py`` would.
    """
    spec = cfg.model.get("first_stage") if "model" in cfg else None
    if not spec or spec.get("run") or spec.get("ckpt") or not spec.get("experiment"):
        return
    experiment = spec.experiment
    runs = finished_runs(cfg.logdir, experiment)
    if runs:
        run_dir = runs[-1]
        rank_zero_info(f"First stage: reusing {run_dir} (newest finished {experiment} run under {cfg.logdir})")
    elif not cfg.train:
        raise ValueError(f"no finished {experiment} run under {cfg.logdir} for model.first_stage; train with -t "
                         f"(the first stage trains first) or set model.first_stage.run=<run directory>")
    elif not single_process(cfg):
        raise ValueError(f"no finished {experiment} run under {cfg.logdir}, and it is not trained automatically "
                         f"under multi-process training: run `python main.py -t experiment={experiment} "
                         f"-l {cfg.logdir}` first, or set model.first_stage.run=<run directory>")
    else:
        rank_zero_info(f"First stage: no finished {experiment} run under {cfg.logdir}; training it first")
        first = compose(first_stage_overrides(cfg, experiment))
        run(first)
        run_dir = Path(first.run_dir)
        if not (run_dir / FINISHED).is_file():
            raise ValueError(f"the first stage {run_dir} did not finish training; resume it with "
                               f"`python main.py -t -r {run_dir}`, then run this command again")
    with open_dict(cfg):
        cfg.model.first_stage.run = str(run_dir)
