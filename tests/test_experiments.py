"""Every experiment config composes and trains for two steps, downloadable datasets replaced by tiny stand-ins.

All runs share one log directory, so a latent-diffusion recipe reuses the two-step run of its first-stage
experiment (or trains one first when run alone) through the real reuse logic of ``main.py``. The GPU recipes'
networks train at width 32 or their head width (``narrowed``; ``test_full_width_builds`` builds them at full width),
and the checkpoints hold weights only and are deleted once checked, except a first stage's, which the
latent-diffusion recipes load.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import sd_tiny
import torch
from fake_data import write_captioned_images, write_fake_dataset
from omegaconf import DictConfig, OmegaConf
from sd_tiny import write_tiny_sd

from pixelforge.benchmark.recipes import compose
from pixelforge.cli import compose_config, experiments, parse
from pixelforge.stages import connect, plan, prerequisites
from pixelforge.train import build_model, run
from pixelforge.utils.meta import parameters_on_meta

SMOKE = ["trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
         "trainer.num_sanity_val_steps=0", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true",
         "trainer.benchmark=false", "data.batch_size=4", "data.eval_batch_size=4", "data.num_workers=0",
         "data.pin_memory=false", "callbacks.progress_bar=null",
         # images once, after the second step (log_images samples, which costs as much as training here)
         "callbacks.image_logger.every_n_steps=2", "callbacks.image_logger.increase_log_steps=false",
         "callbacks.image_logger.log_on_val=false",
         # one checkpoint (last.ckpt), without optimiser state: a full-size GPU recipe's would take GBs
         "callbacks.model_checkpoint.save_top_k=0", "+callbacks.model_checkpoint.save_weights_only=true"]


WIDTHS, NARROW, GPU_WIDTH = ("unet.model_channels", "ddconfig.ch"), 32, 128


def stand_in(cfg: DictConfig, tmp_path: Path) -> list[str]:
    """Overrides that point a recipe needing downloaded or user data at tiny data written here (once: a latent
    diffusion recipe and its first stage share it; at most 32 px), one fine-tuning released weights at a tiny
    random file, and a recipe caching its latents at 64 training items."""
    weights = []
    if cfg.model._target_.endswith("stable_diffusion.pretrained"):
        ckpt = tmp_path / "sd" / "model.safetensors"
        if not ckpt.exists():
            write_tiny_sd(ckpt)
        weights = [f"model.ckpt={ckpt}", *sd_tiny.overrides()]
    if OmegaConf.select(cfg, "callbacks.latent_cache"):  # it encodes the whole training split before step one
        weights.append("data.dataset.num_samples.train=64")
    target = cfg.data.dataset._target_
    if target.endswith("TorchvisionDataset"):
        root = tmp_path / "data" / cfg.data.dataset.name
        if not root.exists():
            write_fake_dataset(cfg.data.dataset.name, root)
        # 64 px GPU recipes (CelebA) at 32 px: the same networks, a quarter of the convolutions' work
        return [f"paths.data_dir={root}", *(["data.image_size=32"] if cfg.data.image_size > 32 else [])]
    if target.endswith("ImageTextFolderDataset"):
        if not (tmp_path / "folder").exists():
            write_captioned_images(tmp_path / "folder")
        return [f"data.dataset.root={tmp_path / 'folder'}", "data.image_size=32", *weights]
    if "root" in cfg.data.dataset:
        pytest.fail(f"add a stand-in for {target} to tests/test_experiments.py")
    return weights


def narrowed(cfg: DictConfig) -> list[str]:
    """Overrides that train a GPU recipe's U-Net or autoencoder at width 32, or its head width if wider (depth,
    levels, attention and head width kept): a two-step run at full width spends minutes and GBs on weights.
    ``test_full_width_builds`` builds each of them whole, on the meta device. A recipe fine-tuning released
    weights keeps their size."""
    if cfg.model._target_.endswith("stable_diffusion.pretrained"):
        return []
    width = max(NARROW, OmegaConf.select(cfg.model, "unet.num_head_channels") or 0)  # whole heads
    return [f"model.{key}={width}" for key in WIDTHS if (OmegaConf.select(cfg.model, key) or 0) >= GPU_WIDTH]


def smoke_config(overrides: list[str], tmp_path: Path) -> DictConfig:
    """The two-step config of ``overrides`` with stand-in data, a GPU recipe's networks narrowed."""
    cfg = compose_config(*parse(overrides))
    overrides = [*overrides, *stand_in(cfg, tmp_path), *narrowed(cfg), *SMOKE]
    if "log_sampler" in cfg.model:
        overrides.append("model.log_sampler.steps=2")
    if "knn" in cfg.model:  # the kNN monitor embeds this many training images
        overrides.append("model.knn.bank_size=64")
    return compose_config(*parse(["-t", *overrides]))


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stand-in data and log directory shared by all experiments of this module."""
    return tmp_path_factory.mktemp("experiments")


@pytest.fixture(scope="module")
def stages() -> set[str]:
    """Experiments whose runs a recipe builds on (first stages, CLIPs): their smoke checkpoints are kept."""
    configs = (compose_config(*parse([f"experiment={name}"])) for name in experiments())
    return {node.experiment for cfg in configs for node in prerequisites(cfg).values() if node.get("experiment")}


@pytest.mark.parametrize("experiment", experiments())
def test_experiment_trains_two_steps(experiment: str, shared_dir: Path, stages: set[str], no_md5: None) -> None:
    cfg = smoke_config([f"experiment={experiment}", "-l", str(shared_dir / "logs")], shared_dir)
    *planned, _ = plan(cfg, lambda stage: smoke_config(stage, shared_dir))
    for stage in planned:  # usually none: first stages and CLIPs sort before the LDMs and are kept
        run(stage)
        connect(cfg, stage)
    metrics = run(cfg)
    run_dir = Path(cfg.run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False, mmap=True)["global_step"] == 2
    assert list((run_dir / "images" / "train").glob("*.png"))
    assert metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    if experiment not in stages:
        last.unlink()


def test_full_width_builds() -> None:
    """What the smoke runs narrow, built at its configured width (on the meta device: no memory, no time). A
    pretrained Hugging Face text encoder cannot be built there; our own text transformer stands in for it."""
    built = []
    for experiment in experiments():
        cfg = compose_config(*parse([f"experiment={experiment}"]))
        if not narrowed(cfg):
            continue
        hf = "FrozenHF" in str(OmegaConf.select(cfg, "model.conditioner.caption.encoder._target_"))
        own = ["model/text_encoder@model.conditioner.caption.encoder=transformer",
               "~model.conditioner.caption.encoder.max_length"]
        cfg = compose(experiment, own if hf else [], torch.device("cpu"))
        with parameters_on_meta():
            model = build_model(cfg, L.Trainer(accelerator="cpu", devices=1, logger=False))
        widths = [OmegaConf.select(cfg.model, key) for key in WIDTHS if OmegaConf.select(cfg.model, key)]
        assert min(widths) >= GPU_WIDTH and sum(p.numel() for p in model.parameters()) > 10_000_000, experiment
        built.append(experiment)
    assert {"ldm_celeba64", "ldm_image_text_folder", "autoencoder_kl_celeba64", "ddpm_cifar10"} <= set(built)
