"""DictConfig -> run directory, seed, instantiated data/model/trainer, then fit and/or test."""

from __future__ import annotations

import itertools
import os
import pdb
import shutil
import sys
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from omegaconf import DictConfig, OmegaConf, open_dict

from pixelforge import launch
from pixelforge.banner import print_banner
from pixelforge.callbacks.checkpointing import AtomicCheckpointIO
from pixelforge.checkpoints import check_checkpoint
from pixelforge.parallel import FSDPStrategy
from pixelforge.runs import FINISHED, model_config
from pixelforge.stages import single_process
from pixelforge.utils.precision import AUTO, allow_fused_clipping, auto_precision
from pixelforge.utils.threads import busy_warning, choose_threads, other_runnable, usable_cores
from pixelforge.validation import ConfigError, check_config

RUN_DIR_ENV = "PIXELFORGE_RUN_DIR"


def is_child_process() -> bool:
    """True in the processes Lightning's DDP launcher starts for ranks > 0 (they re-run main.py)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 and RUN_DIR_ENV in os.environ


def make_run_dir(cfg: DictConfig) -> Path:
    """``<logdir>/[debug_runs/]<YYYY-MM-DDTHH-MM-SS>_<name><postfix>``, made once and never shared.

    A second run started in the same second gets a ``-1``, ``-2`` ... suffix. The directory is published in
    an environment variable that Lightning's DDP launcher passes to the other ranks, which reuse it, and, in a
    launch of several nodes, through the log directory (``launch``).
    """
    if cfg.run_dir:
        return Path(cfg.run_dir)
    if is_child_process():
        return Path(os.environ[RUN_DIR_ENV])
    rank = launch.external_rank()
    if rank:  # a process of a multi-node launch other than the first: rank 0 names the directory
        run_dir = launch.receive(cfg.logdir)
        os.environ[RUN_DIR_ENV] = str(run_dir)  # for this node's own DDP children
        return run_dir
    root = Path(cfg.logdir) / "debug_runs" if cfg.debug else Path(cfg.logdir)
    stem = f"{datetime.now():%Y-%m-%dT%H-%M-%S}_{cfg.name}{cfg.postfix or ''}"
    for attempt in itertools.count():
        run_dir = root / (stem if attempt == 0 else f"{stem}-{attempt}")
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
            break
        except FileExistsError:
            continue
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    if rank == 0:
        launch.publish(cfg.logdir, run_dir.resolve())
    return run_dir.resolve()


@rank_zero_only
def save_config(cfg: DictConfig, run_dir: Path) -> None:
    """The resolved config as ``configs/config.yaml`` (what ``-r`` restores) plus a timestamped copy."""
    configs = run_dir / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    text = OmegaConf.to_yaml(cfg, resolve=True)
    (configs / f"{datetime.now():%Y-%m-%dT%H-%M-%S}-config.yaml").write_text(text)
    tmp = configs / ".config.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, configs / "config.yaml")


def learning_rate(model_cfg: DictConfig, scale_lr: bool, trainer: L.Trainer, batch_size: int) -> float:
    """The optimizer's lr: an explicit ``model.optimizer.lr``, else the base lr, scaled as in CompVis."""
    base = model_cfg.base_learning_rate
    if model_cfg.optimizer.get("lr") is not None:
        lr = model_cfg.optimizer.lr
        rank_zero_info(f"Using model.optimizer.lr = {lr:.2e} as given (base_learning_rate and --scale_lr ignored)")
    elif scale_lr:
        accumulate, devices, nodes = trainer.accumulate_grad_batches, trainer.num_devices, trainer.num_nodes
        lr = accumulate * devices * nodes * batch_size * base
        rank_zero_info(f"Setting learning rate to {lr:.2e} = {accumulate} (accumulate_grad_batches) * {devices} "
                       f"(devices) * {nodes} (num_nodes) * {batch_size} (batch_size) * {base:.2e} (base_lr)")
    else:
        lr = base
        rank_zero_info(f"++++ NOT USING LR SCALING ++++\nSetting learning rate to {lr:.2e}")
    return float(lr)


def build_model(cfg: DictConfig, trainer: L.Trainer) -> L.LightningModule:
    """Instantiate ``cfg.model`` for training: ``base_learning_rate`` becomes the optimizer's lr."""
    model_cfg = model_config(cfg.model)
    if "base_learning_rate" in cfg.model:
        with open_dict(model_cfg):
            model_cfg.optimizer.lr = learning_rate(cfg.model, cfg.scale_lr, trainer, cfg.data.batch_size)
    return instantiate(model_cfg, _convert_="all")


def build_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    """The Trainer with the configured callbacks and loggers (null entries dropped), atomic checkpoints, and mixed
    precision that clips fused optimizers' gradients."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                          plugins=[AtomicCheckpointIO()], default_root_dir=str(run_dir))
    allow_fused_clipping(trainer)
    return trainer


# logger config key -> the logger attribute holding the run it logs to (wandb's id, MLflow's run id)
RUN_ID_KEYS = {"id": "version", "run_id": "run_id"}


def pin_logger_runs(cfg: DictConfig, trainer: L.Trainer) -> None:
    """Write the run id of each logger that names its run by one (wandb, MLflow) into the config that is saved,
    so that ``-r`` continues the same logger run."""
    configs = [c for c in (cfg.get("logger") or {}).values() if c is not None]
    for logger_cfg, logger in zip(configs, trainer.loggers, strict=True):
        for key, attribute in RUN_ID_KEYS.items():
            if key in logger_cfg and logger_cfg[key] is None:
                logger.experiment  # noqa: B018 - starts the logger's run, which gives it its id
                logger_cfg[key] = getattr(logger, attribute)


def checkpoint_to_test(cfg: DictConfig, trainer: L.Trainer) -> str | None:
    """Which weights to test: the given checkpoint, else the best one of this fit, else the current ones."""
    if not cfg.train:
        return cfg.ckpt_path
    best = trainer.checkpoint_callback.best_model_path if isinstance(trainer.checkpoint_callback,
                                                                     ModelCheckpoint) else ""
    return best or None


def check_runnable(cfg: DictConfig) -> None:
    """Fail before anything is written when the run has nothing to do or its checkpoint is missing or unreadable."""
    if not cfg.train and not cfg.ckpt_path:
        raise ValueError("nothing to do: pass -t to train, or test a checkpoint with -r RUN_DIR or ckpt_path=PATH")
    if cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():
        raise ValueError(f"ckpt_path={cfg.ckpt_path!r}: no such checkpoint file")
    if cfg.ckpt_path:
        check_checkpoint(cfg.ckpt_path)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """``cfg.data`` instantiated; its constructor's checks (``data.batch_size=-4``) become a ConfigError."""
    try:
        return instantiate(cfg.data)
    except InstantiationException as error:
        raise ConfigError.from_instantiation(error) from error


def thread_choice(cfg: DictConfig) -> tuple[int, str] | None:
    """(intra-op threads, why) for a one-process run (``utils.threads``); None under DDP, where Lightning divides
    the cores among the processes itself, and for a device spec the trainer will refuse by name. A bad ``threads``
    is a ConfigError."""
    try:
        if not single_process(cfg):
            return None
    except (TypeError, ValueError):  # e.g. trainer.devices=abc
        return None
    try:
        return choose_threads(cfg.get("threads"), int(OmegaConf.select(cfg, "data.num_workers") or 0))
    except ValueError as error:
        raise ConfigError(str(error)) from error


def resolve_precision(cfg: DictConfig) -> None:
    """``trainer.precision=auto`` replaced by this machine's choice (``utils.precision``), said at start and saved
    with the run, so a resumed run keeps the precision it trained in."""
    if cfg.trainer.get("precision") != AUTO:
        return
    precision, why = auto_precision(str(cfg.trainer.get("accelerator", "auto")))
    with open_dict(cfg):
        cfg.trainer.precision = precision
    rank_zero_info(f"Precision: {precision} (trainer.precision=auto: {why})")


def set_threads(threads: int, why: str) -> None:
    """Use ``threads`` intra-op threads, say so and why, and warn when other jobs already load the cores."""
    torch.set_num_threads(threads)
    rank_zero_info(f"Threads: {threads} intra-op ({why}; threads=N overrides)")
    others = other_runnable()
    if others is not None and (warning := busy_warning(threads, usable_cores(), others)):
        rank_zero_warn(warning)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and/or test as ``cfg`` says; returns the test metrics (empty when not testing). The intra-op thread
    count is the run's own: the process gets its own back when the run ends."""
    check_runnable(cfg)
    resolve_precision(cfg)
    check_config(cfg)
    mismatch = launch.world_size_mismatch(int(cfg.trainer.get("num_nodes", 1)), cfg.trainer.get("devices", "auto"))
    if mismatch:
        raise ConfigError(mismatch)
    datamodule = build_datamodule(cfg)
    choice, threads = thread_choice(cfg), torch.get_num_threads()
    new = not cfg.run_dir and not is_child_process() and not launch.external_rank()
    run_dir = make_run_dir(cfg)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    L.seed_everything(cfg.seed, workers=True)
    try:
        if choice:
            set_threads(*choice)
        try:
            trainer = build_trainer(cfg, run_dir)
            model = build_model(cfg, trainer)
            if isinstance(trainer.strategy, FSDPStrategy):
                trainer.strategy.blocks(model)  # a model FSDP cannot shard fails here, before anything is written
        except (InstantiationException, ConfigError) as error:  # a config that cannot be built writes nothing (a
            if new:                             # resumed run keeps its saved config) and leaves no new run directory
                shutil.rmtree(run_dir, ignore_errors=True)
            if isinstance(error, ConfigError):
                raise
            raise ConfigError.from_instantiation(error) from error
        if trainer.is_global_zero:
            pin_logger_runs(cfg, trainer)
        save_config(cfg, run_dir)
        if trainer.is_global_zero:
            print_banner(cfg, run_dir, trainer, model)
        if not cfg.resume:  # a resumed run's loggers have them already (and MLflow refuses changed values)
            for logger in trainer.loggers:
                logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if cfg.train:
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path if cfg.resume else None,
                        weights_only=True)
            if not trainer.interrupted and trainer.is_global_zero:
                (run_dir / FINISHED).write_text(f"global_step {trainer.global_step}\n")
        if cfg.test and not trainer.interrupted:
            results = trainer.test(model, datamodule=datamodule, ckpt_path=checkpoint_to_test(cfg, trainer),
                                   weights_only=True)
            return results[0] if results else {}
        return {}
    except Exception:
        if cfg.debug and sys.stdin.isatty():
            pdb.post_mortem(sys.exc_info()[2])
        raise
    finally:
        torch.set_num_threads(threads)
        if new and launch.external_rank() == 0:
            launch.retract(cfg.logdir)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
