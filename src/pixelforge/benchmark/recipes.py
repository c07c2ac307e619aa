"""What the cases time, built as training builds it: an experiment's composed config -> its DiffusionModel and
datamodule -> a real training batch; Stable Diffusion's model from the project's own SD config."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import move_data_to_device
from omegaconf import DictConfig, OmegaConf, open_dict

from pixelforge.cli import compose_config, parse
from pixelforge.interop import stable_diffusion
from pixelforge.models.diffusion import DiffusionModel
from pixelforge.runs import model_config
from pixelforge.stages import unresolved
from pixelforge.train import build_datamodule, build_model

PROMPT = "a photograph of an astronaut riding a horse"  # the captions of Stable Diffusion's synthetic batch


@dataclass
class Subject:
    """One timed model: its name (the experiment, or the SD version), the model and a training batch on its device."""

    name: str
    model: DiffusionModel
    batch: dict[str, Any]


def compose(experiment: str, overrides: Sequence[str], device: torch.device) -> DictConfig:
    """The experiment's config as ``main.py`` composes it, on one device of ``device``'s kind.

    A first stage or CLIP the recipe names by experiment (which ``main.py -t`` would train first) is built untrained
    from that experiment's model config, composed with the same ``data.*`` overrides: timing needs its shape, not
    its weights, so no trained run is needed. The trainer is in fp32: the cases time each precision themselves.
    """
    accelerator = "cpu" if device.type == "cpu" else "gpu"
    cfg = compose_config(*parse([f"experiment={experiment}", *overrides, f"trainer.accelerator={accelerator}",
                                 "trainer.devices=1", "trainer.precision=32-true"]))
    data = [override for override in overrides if override.startswith("data.")]
    for path, node in unresolved(cfg).items():
        stage = compose_config(*parse([f"experiment={node.experiment}", *data]))
        model = OmegaConf.to_container(model_config(stage.model), resolve=True)
        if path != "model.first_stage":  # a text encoder: the CLIP's text tower
            model = {"_target_": "pixelforge.models.clip.text_tower", "clip": model, "layer": node.get("layer", "last")}
        with open_dict(cfg):
            OmegaConf.update(cfg, path, model, merge=False)
    return cfg


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Lightning's info lines (the lr, the accelerators, tips) held back: the cases build a model each."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def build(cfg: DictConfig) -> tuple[DiffusionModel, L.LightningDataModule]:
    """The model (its lr set from the batch as ``--scale_lr`` does) and datamodule that ``train.run`` builds."""
    L.seed_everything(cfg.seed, verbose=False)
    with quiet():
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
        model = build_model(cfg, trainer)
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"experiment {cfg.experiment_name} builds a {type(model).__name__}; the benchmark times "
                         "diffusion models (DiffusionModel)")
    return model, build_datamodule(cfg)


def first_batch(datamodule: L.LightningDataModule, device: torch.device) -> dict[str, Any]:
    """The first training batch of ``datamodule``, its tensors on ``device``."""
    return move_data_to_device(next(iter(datamodule.train_dataloader())), device)


def recipe(experiment: str, overrides: Sequence[str], device: torch.device) -> Subject:
    """The experiment's model and its first training batch, both on ``device``; where the recipe caches its latents
    (``callbacks.latent_cache``) the batch carries them, so its training step skips the encoder as training does."""
    cfg = compose(experiment, overrides, device)
    model, datamodule = build(cfg)
    model, batch = model.to(device), first_batch(datamodule, device)
    if OmegaConf.select(cfg, "callbacks.latent_cache"):
        with torch.no_grad():
            batch["latent"] = model.first_stage.encode_latent(batch["image"])
    return Subject(experiment, model, batch)


def stable_diffusion_model(version: str, toy: bool, batch_size: int, device: torch.device) -> Subject:
    """Stable Diffusion ``version`` with random weights (``toy``: shrunk to ``stable_diffusion.toy``) and a batch of
    random images captioned with PROMPT: no released weights or data are needed to time it."""
    torch.manual_seed(0)
    model = stable_diffusion.build(version, stable_diffusion.toy() if toy else None).to(device)
    size, channels = model.image_size, model.first_stage.in_channels
    batch = {"image": torch.rand(batch_size, channels, size, size, device=device) * 2 - 1,
             "caption": [PROMPT] * batch_size}
    return Subject(f"sd {version}{' toy' if toy else ''}", model, batch)
