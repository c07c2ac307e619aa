"""The run-directory format, at the bottom of the house: find a run's checkpoint and config, rebuild its model,
tell a finished run, move a run. Models, metrics, scripts and training import it; it imports none of them.

A run directory is ``<logdir>/<YYYY-MM-DDTHH-MM-SS>_<name><postfix>/`` with ``configs/config.yaml`` (the resolved
config), ``checkpoints/last.ckpt`` (+ top-k), ``tensorboard/``, ``images/`` and, once training completed, the file
``finished``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from pixelforge.checkpoints import load_checkpoint

FINISHED = "finished"  # written into a run directory when its training completes (not when interrupted)
TRAINING_KEYS = ("base_learning_rate",)  # model keys that training reads and removes before instantiation
LEGACY_TARGETS = {  # model classes of older runs -> the factories that build today's model from their configs
    "pixelforge.models.diffusion.DDPM": "pixelforge.models.legacy.ddpm",
    "pixelforge.models.latent_diffusion.LatentDiffusion": "pixelforge.models.legacy.latent_diffusion",
}


def upgrade(cfg: DictConfig) -> DictConfig:
    """A saved run config made by older code, pointed at what builds its model today (see ``LEGACY_TARGETS``)."""
    target = OmegaConf.select(cfg, "model._target_")
    if target in LEGACY_TARGETS:
        cfg.model._target_ = LEGACY_TARGETS[target]
    return cfg


def model_config(model: DictConfig | Mapping[str, Any]) -> DictConfig:
    """``model`` without the keys only training reads (``base_learning_rate``): what instantiates the model."""
    model = model.copy() if isinstance(model, DictConfig) else OmegaConf.create(dict(model))
    with open_dict(model):
        for key in TRAINING_KEYS:
            model.pop(key, None)
    return model


def find_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """A run directory or a checkpoint inside one -> (checkpoint, the run's saved config)."""
    path = Path(path)
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.ckpt"
        run_dir = path
    else:
        ckpt = path
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt}; pass a run directory (with checkpoints/last.ckpt) "
                                "or a .ckpt file")
    return ckpt, run_dir / "configs" / "config.yaml"


def load_run(path: str | Path, config: str | Path | None = None,
             map_location: str | torch.device = "cpu") -> tuple[DictConfig, L.LightningModule]:
    """Rebuild a trained model from its run: the saved (or given) config instantiates it, the checkpoint fills it.

    Scripts and metrics load models only through here, so no script re-implements a model.
    """
    ckpt_path, saved_config = find_checkpoint(path)
    config = Path(config) if config else saved_config
    if not config.is_file():
        raise FileNotFoundError(f"no config at {config}; pass --config with the run's configs/config.yaml")
    cfg = upgrade(OmegaConf.load(config))
    model = instantiate(model_config(cfg.model), _convert_="all")
    checkpoint = load_checkpoint(ckpt_path, map_location)
    model.on_load_checkpoint(checkpoint)  # as Lightning does before loading the weights
    missing, unexpected = model.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{ckpt_path} does not fit the model of {config}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return cfg, model.eval()


def is_finished(run_dir: str | Path) -> bool:
    """Whether the run's training completed (not interrupted, not stopped by a non-finite loss)."""
    run_dir = Path(run_dir)
    return (run_dir / FINISHED).is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()


def best_score(run_dir: str | Path) -> tuple[str | None, float]:
    """(monitored metric, its best value) as the run's checkpoint callback recorded them in ``last.ckpt``; (None,
    NaN) for a run that monitors nothing."""
    checkpoint = load_checkpoint(Path(run_dir) / "checkpoints" / "last.ckpt", mmap=True)
    for state in checkpoint.get("callbacks", {}).values():
        if isinstance(state, dict) and state.get("monitor") and state.get("best_model_score") is not None:
            return state["monitor"], float(state["best_model_score"])
    return None, float("nan")


def experiment_of(run_dir: str | Path) -> str | None:
    """The experiment the run was composed from, as its saved config records it (runs made before the
    ``experiment_name`` key: their ``name``, which was the experiment's unless ``-n`` set another)."""
    config = Path(run_dir) / "configs" / "config.yaml"
    if not config.is_file():
        return None
    saved = OmegaConf.load(config)
    return saved.get("experiment_name", saved.get("name"))


def finished_runs(logdir: str | Path, experiment: str) -> list[Path]:
    """Finished run directories under ``logdir`` composed from ``experiment``, oldest first.

    Matched by the saved config, not the folder name: a run named with ``-n``/``-f`` is found, and one of an
    experiment whose name merely ends the same (``kl_shapes`` vs ``autoencoder_kl_shapes``) is not.
    """
    root = Path(logdir)
    if not root.is_dir():
        return []
    runs = [path for path in root.iterdir()
            if path.is_dir() and is_finished(path) and experiment_of(path) == experiment]
    return sorted(runs, key=lambda path: path.name)


def moved(path: str, old: str, new: str) -> str:
    """``path`` with the directory prefix ``old`` replaced by ``new`` (unchanged when it is not under ``old``)."""
    if path == old or path.startswith(old.rstrip(os.sep) + os.sep):
        return new + path[len(old):]
    return path


def relocate(cfg: DictConfig, old: str, new: str) -> None:
    """Point every path under run directory ``old`` in the saved ``cfg`` at ``new`` (the run was moved).

    A saved config is resolved, so ``${run_dir}/checkpoints`` became an absolute path: without this, a moved run
    resumed with ``-r`` would write its checkpoints and logs into its old location, re-created.
    """
    for _, node, key, value in walk(cfg):
        if isinstance(value, str):
            node[key] = moved(value, old, new)


def walk(cfg: DictConfig) -> Iterator[tuple[str, DictConfig | ListConfig, Any, Any]]:
    """``(dotted path, parent node, key, resolved value)`` of everything below ``cfg``, parents before children;
    ``???`` values are left out."""
    queue: list[tuple[str, DictConfig | ListConfig]] = [("", cfg)]
    while queue:
        path, node = queue.pop(0)
        for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
            if OmegaConf.is_missing(node, key):
                continue
            value, where = node[key], f"{path}.{key}" if path else str(key)
            yield where, node, key, value
            if isinstance(value, (DictConfig, ListConfig)):
                queue.append((where, value))
