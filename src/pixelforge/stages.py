"""Two-stage recipes as a plan: a latent-diffusion config names its first-stage experiment; reuse the newest
finished run of that experiment under the log directory, or put a run of it first in the plan."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, open_dict

from pixelforge.runs import finished_runs, is_finished

DEVICE_KEYS = ("accelerator", "devices", "precision")


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
    """Overrides that train ``experiment`` as ``cfg`` would run: same log directory, seed, devices and threads."""
    overrides = ["train=true", f"experiment={experiment}", f"logdir={cfg.logdir}", f"seed={cfg.seed}"]
    if cfg.get("threads") is not None:
        overrides.append(f"threads={cfg.threads}")
    return overrides + [f"trainer.{key}={cfg.trainer[key]}" for key in DEVICE_KEYS if key in cfg.trainer]


def plan(cfg: DictConfig, compose: Callable[[list[str]], DictConfig]) -> list[DictConfig]:
    """The configs to run, in order: ``[cfg]``, or ``[first stage, cfg]`` when ``cfg`` needs a first stage trained.

    A model whose ``first_stage`` names an ``experiment`` (and no run or checkpoint) is pointed at the newest
    finished run of it under the log directory; without one, a run of it is planned first (``connect`` then
    points ``cfg`` at it). ``compose`` turns overrides into a config as ``main.py`` would. Nothing runs here.
    """
    spec = cfg.model.get("first_stage") if "model" in cfg else None
    if not spec or spec.get("run") or spec.get("ckpt") or not spec.get("experiment"):
        return [cfg]
    experiment = spec.experiment
    runs = finished_runs(cfg.logdir, experiment)
    if runs:
        rank_zero_info(f"First stage: reusing {runs[-1]} (newest finished {experiment} run under {cfg.logdir})")
        point_at(cfg, runs[-1])
        return [cfg]
    if not cfg.train:
        raise ValueError(f"no finished {experiment} run under {cfg.logdir} for model.first_stage; train with -t "
                         f"(the first stage trains first) or set model.first_stage.run=<run directory>")
    if not single_process(cfg):
        raise ValueError(f"no finished {experiment} run under {cfg.logdir}, and it is not trained automatically "
                         f"under multi-process training: run `python main.py -t experiment={experiment} "
                         f"-l {cfg.logdir}` first, or set model.first_stage.run=<run directory>")
    rank_zero_info(f"First stage: no finished {experiment} run under {cfg.logdir}; training it first")
    return [compose(first_stage_overrides(cfg, experiment)), cfg]


def point_at(cfg: DictConfig, run_dir: Path) -> None:
    """Make ``cfg``'s model use the first-stage run ``run_dir``."""
    with open_dict(cfg):
        cfg.model.first_stage.run = str(run_dir)


def connect(cfg: DictConfig, first: DictConfig) -> None:
    """Point ``cfg`` at the first stage ``first`` that the plan just trained; it must have finished."""
    run_dir = Path(first.run_dir)
    if not is_finished(run_dir):
        raise RuntimeError(f"the first stage {run_dir} did not finish training; resume it with "
                           f"`python main.py -t -r {run_dir}`, then run this command again")
    point_at(cfg, run_dir)
