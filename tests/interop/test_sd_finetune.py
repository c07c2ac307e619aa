"""Fine-tuning released Stable Diffusion weights (a tiny random stand-in) on the shared training path: it starts
from the file's weights, the loss falls on a captioned folder, and ``-r`` resumes the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import sd_tiny
import torch
from fake_data import write_captioned_images
from hydra.utils import instantiate

from pixelforge.cli import compose_config, parse
from pixelforge.interop import stable_diffusion as sd
from pixelforge.runs import model_config
from pixelforge.train import run

QUIET = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true", "callbacks.progress_bar=null",
         "callbacks.image_logger=null", "data.num_workers=0", "data.batch_size=4", "trainer.limit_val_batches=1",
         "trainer.num_sanity_val_steps=0", "--no-test", "model.unet.use_checkpoint=false"]


def test_fine_tuning_starts_from_the_file_lowers_the_loss_and_resumes(tmp_path: Path) -> None:
    ckpt = sd_tiny.write_tiny_sd(tmp_path / "model.safetensors")
    write_captioned_images(tmp_path / "folder", count=8, size=32)
    common = ["experiment=sd_finetune", f"data.dataset.root={tmp_path / 'folder'}", "data.image_size=32",
              f"model.ckpt={ckpt}", *sd_tiny.overrides(), *QUIET]
    cfg = compose_config(*parse(["-t", "-l", str(tmp_path / "logs"), *common, "trainer.max_steps=2"]))
    model = instantiate(model_config(cfg.model), _convert_="all")  # what training builds: pretrained(...)
    reference = sd.load(ckpt, overrides=sd_tiny.TINY)
    assert all(torch.equal(v, reference.unet.state_dict()[k]) for k, v in model.unet.state_dict().items())

    torch.manual_seed(0)
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1, "caption": ["a red cube", "a blue ball"] * 2}
    optimizer = torch.optim.AdamW(model.trained().parameters(), lr=2e-3)
    start = sum(model.loss(batch)[0].mean().item() for _ in range(5)) / 5
    for _ in range(40):
        loss = model.loss(batch, drop=True)[0].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = sum(model.loss(batch)[0].mean().item() for _ in range(5)) / 5
    assert end < 0.6 * start, (start, end)

    run(cfg)
    (run_dir,) = (tmp_path / "logs").iterdir()
    resumed = compose_config(*parse(["-r", str(run_dir), "-t", "trainer.max_steps=3", "--no-test"]))
    run(resumed)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, mmap=True)["global_step"] == 3



def test_the_ema_of_a_fine_tune_shares_the_frozen_text_tower_and_leaves_out_the_vae(tmp_path: Path) -> None:
    ckpt = sd_tiny.write_tiny_sd(tmp_path / "model.safetensors")
    cfg = compose_config(*parse(["experiment=sd_finetune", f"model.ckpt={ckpt}", *sd_tiny.overrides(), *QUIET]))
    model = instantiate(model_config(cfg.model), _convert_="all")
    shadow = model.ema.module
    towers = (m.embedders["caption"].encoder for m in (shadow["conditioner"], model.conditioner))
    assert next(towers).model is next(towers).model
    assert set(shadow) == {"unet", "conditioner"}  # no copy of the first stage
    assert all(torch.equal(a, b) for a, b in zip(shadow["unet"].parameters(), model.unet.parameters(), strict=True))


def test_an_unknown_optimizer_package_fails_with_its_name() -> None:
    """optimizer=adamw8bit composes everywhere; without bitsandbytes (GPU only) the config check names it."""
    import importlib.util

    from pixelforge.validation import ConfigError, check_config

    cfg = compose_config(*parse(["experiment=sd_finetune", "optimizer=adamw8bit"]))
    assert cfg.model.optimizer._target_ == "bitsandbytes.optim.AdamW8bit"
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ConfigError, match="bitsandbytes.optim.AdamW8bit' cannot be imported"):
            check_config(cfg)
