"""Recipes built on other runs, as a plan: a latent-diffusion config names its first-stage experiment (and may name
a CLIP experiment for its text encoder); reuse the newest finished run of each under the log directory, or put a
run of it first in the plan."""

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


def prerequisites(cfg: DictConfig) -> dict[str, DictConfig]:
    """The nodes of ``cfg.model`` that name another run, by their dotted path in ``cfg``: its ``first_stage`` and
    each conditioner embedder's ``encoder`` that has an ``experiment`` key (our own CLIP's text tower). Each may
    hold an ``experiment`` and a ``run``."""
    model = cfg.get("model") or {}
    nodes = {"model.first_stage": model.get("first_stage")}
    for name, embedder in (model.get("conditioner") or {}).items():
        if isinstance(embedder, DictConfig):
            nodes[f"model.conditioner.{name}.encoder"] = embedder.get("encoder")
    return {path: node for path, node in nodes.items() if isinstance(node, DictConfig) and "experiment" in node}


def unresolved(cfg: DictConfig) -> dict[str, DictConfig]:
    """The ``prerequisites`` that name an experiment but no run or checkpoint yet."""
    return {path: node for path, node in prerequisites(cfg).items()
            if node.get("experiment") and not node.get("run") and not node.get("ckpt")}


def stage_overrides(cfg: DictConfig, experiment: str) -> list[str]:
    """Overrides that train ``experiment`` as ``cfg`` would run: same log directory, seed, devices and threads."""
    overrides = ["train=true", f"experiment={experiment}", f"logdir={cfg.logdir}", f"seed={cfg.seed}"]
    if cfg.get("threads") is not None:
        overrides.append(f"threads={cfg.threads}")
    return overrides + [f"trainer.{key}={cfg.trainer[key]}" for key in DEVICE_KEYS if key in cfg.trainer]


def plan(cfg: DictConfig, compose: Callable[[list[str]], DictConfig]) -> list[DictConfig]:
    """The configs to run, in order: ``[cfg]``, or ``[stage, ..., cfg]`` when ``cfg`` needs runs trained first.

    Each of ``cfg``'s ``prerequisites`` that names an ``experiment`` (and no run or checkpoint) is pointed at the
    newest finished run of it under the log directory; without one, a run of it is planned first (``connect``
    then points ``cfg`` at it). ``compose`` turns overrides into a config as ``main.py`` would. Nothing runs here.
    """
    steps = []
    for path, node in unresolved(cfg).items():
        experiment = node.experiment
        runs = finished_runs(cfg.logdir, experiment)
        if runs:
            rank_zero_info(f"{path}: reusing {runs[-1]} (the newest finished {experiment} run under {cfg.logdir})")
            point_at(node, runs[-1])
            continue
        if not cfg.train:
            raise ValueError(f"no finished {experiment} run under {cfg.logdir} for {path}; train with -t "
                             f"({experiment} trains first) or set {path}.run=<run directory>")
        if not single_process(cfg):
            raise ValueError(f"no finished {experiment} run under {cfg.logdir} for {path}, and it is not trained "
                             f"automatically under multi-process training: run `python main.py -t "
                             f"experiment={experiment} -l {cfg.logdir}` first, or set {path}.run=<run directory>")
        rank_zero_info(f"{path}: no finished {experiment} run under {cfg.logdir}, training it first")
        steps.append(compose(stage_overrides(cfg, experiment)))
    return [*steps, cfg]


def point_at(node: DictConfig, run_dir: Path) -> None:
    """Make the prerequisite ``node`` (a first stage, a text encoder) use the run ``run_dir``."""
    with open_dict(node):
        node.run = str(run_dir)


def connect(cfg: DictConfig, done: DictConfig) -> None:
    """Point ``cfg`` at the run of a stage ``done`` that the plan just trained; it must have finished."""
    run_dir = Path(done.run_dir)
    if not is_finished(run_dir):
        raise RuntimeError(f"{run_dir} did not finish training; resume it with `python main.py -t -r {run_dir}`, "
                           f"then run this command again")
    for node in unresolved(cfg).values():
        if node.experiment == done.experiment_name:
            point_at(node, run_dir)
