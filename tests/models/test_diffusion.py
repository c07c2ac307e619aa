"""Pixel diffusion (DDPM): overfits one batch, EMA follows, guided sampling, and scripts/sample.py on a trained run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from pixelforge.cli import compose_config, parse
from pixelforge.conditioning import Conditioner, Embedder, Labels
from pixelforge.diffusion.schedule import NoiseSchedule
from pixelforge.models.diffusion import DiffusionModel
from pixelforge.modules.unet import UNetModel
from pixelforge.train import run

REPO = Path(__file__).resolve().parents[2]


def tiny_ddpm(num_classes: int | None = None, ucg_rate: float = 0.1, **kwargs) -> DiffusionModel:
    unet = partial(UNetModel, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                   num_heads=2, num_groups=8)
    labels = Embedder(Labels(num_classes), "label", ucg_rate) if num_classes else None
    return DiffusionModel(unet, NoiseSchedule("linear", 100), partial(torch.optim.Adam, lr=2e-3),
                          conditioner=Conditioner(label=labels), image_size=8, channels=1, ema={"decay": 0.9},
                          **kwargs)


def test_overfits_one_batch_and_ema_follows() -> None:
    torch.manual_seed(0)
    model = tiny_ddpm()
    batch = {"image": torch.rand(8, 1, 8, 8) * 2 - 1}
    optimizer = model.optimizer(model.unet.parameters())
    torch.manual_seed(1)
    start = model.loss(batch, drop=True)[0].mean().item()
    for _ in range(150):
        loss = model.loss(batch, drop=True)[0].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.ema.update(model.trained())
    losses = [model.loss(batch)[0].mean().item() for _ in range(10)]
    assert sum(losses) / 10 < 0.35 * start
    live = next(model.unet.parameters()).detach().clone()
    shadow = next(model.networks(use_ema=True)[0].parameters()).detach().clone()
    assert not torch.equal(live, shadow) and torch.allclose(live, shadow, atol=0.2)
    with model.ema.swap(model.trained()):
        assert torch.equal(next(model.unet.parameters()), shadow)
    assert torch.equal(next(model.unet.parameters()), live)


def test_pixel_diffusion_is_the_identity_first_stage_and_a_derived_unet() -> None:
    model = tiny_ddpm(num_classes=3)
    assert model.downsample_factor == 1 and model.channels == 1
    assert (model.unet.input_blocks[0][0].in_channels, model.unet.num_classes) == (1, (3,))
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.equal(model.decode(model.encode(x)), x)
    assert (model.cond_keys, model.class_counts) == (["label"], [3])
    with pytest.raises(ValueError, match="needs channels"):
        DiffusionModel(partial(UNetModel, model_channels=16), NoiseSchedule("linear", 10), torch.optim.Adam)


def test_guided_sampling_with_labels() -> None:
    torch.manual_seed(0)
    model = tiny_ddpm(num_classes=3)
    for sampler in ("ddpm", "ddim", "dpmpp", "euler_a"):
        out = model.sample(labels=torch.tensor([0, 1, 2]), sampler=sampler, steps=5, scale=2.0)
        assert out.shape == (3, 1, 8, 8) and out.abs().max() <= 1
    same = model.sample(conditions={"label": torch.tensor([0, 1])}, steps=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, model.sample(labels=torch.tensor([0, 1]), steps=3,
                                                  generator=torch.Generator().manual_seed(0)))
    unconditional = tiny_ddpm()
    with pytest.raises(ValueError, match="needs a conditional model"):
        unconditional.sample(2, scale=2.0, steps=3)
    with pytest.raises(ValueError, match="not conditioned on class labels"):
        unconditional.sample(labels=torch.tensor([0, 1]), steps=3)
    noise = torch.randn(2, 1, 8, 8)
    assert torch.equal(unconditional.sample(noise=noise, steps=4), unconditional.sample(noise=noise, steps=4))


def test_log_images_rows() -> None:
    model = tiny_ddpm(num_classes=3)
    batch = {"image": torch.rand(4, 1, 8, 8) * 2 - 1, "label": torch.tensor([0, 1, 2, 0])}
    images = model.log_images(batch)
    assert images["diffusion_row"].shape == (8, 1, 8, 8) and images["samples"].shape == (4, 1, 8, 8)
    assert images["samples_cfg"].shape == (4, 1, 8, 8) and "reconstructions" not in images
    assert 2 <= len(images["denoise_row"]) <= 8


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("ddpm")
    overrides = ["-t", "--no-test", "-l", str(logdir), "experiment=ddpm_mnist5k_cond", "data=digits",
                 "data.image_size=8", "model.unet.channel_mult=[1,2]", "model.unet.model_channels=16",
                 "model.unet.attention_resolutions=[2]", "trainer.max_steps=2", "trainer.limit_val_batches=1",
                 "trainer.num_sanity_val_steps=0", "model.log_sampler.steps=2", "callbacks.progress_bar=null",
                 "trainer.accelerator=cpu", "trainer.devices=1"]
    run(compose_config(*parse(overrides)))
    (run_dir,) = logdir.iterdir()
    return run_dir


def test_sample_script_writes_pngs_grid_and_record(trained_run: Path, tmp_path: Path) -> None:
    command = [sys.executable, "scripts/sample.py", "--ckpt", str(trained_run), "--n_samples", "2", "--steps", "3",
               "--sampler", "ddim", "--scale", "2", "--outdir", str(tmp_path), "--batch_size", "8"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "samples").glob("*.png"))) == 20  # all ten classes, two each
    assert (tmp_path / "grid-0000.png").is_file()
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert records[0]["sampler"] == "ddim" and [r["label"] for r in records[:3]] == [0, 0, 1]
    one = subprocess.run([*command, "--class_label", "7", "--n_samples", "3"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0 and len(list((tmp_path / "samples").glob("*.png"))) == 23


def test_sample_script_errors_are_clear(trained_run: Path, tmp_path: Path) -> None:
    missing = subprocess.run([sys.executable, "scripts/sample.py", "--ckpt", str(tmp_path / "nope")], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no checkpoint" in missing.stderr
    bad = subprocess.run([sys.executable, "scripts/sample.py", "--ckpt", str(trained_run), "--class_label", "12",
                          "--outdir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "0..9" in bad.stderr


def test_evaluate_script_reports_fid_and_accuracy_per_sampler(trained_run: Path, tmp_path: Path) -> None:
    overrides = ["-t", "--no-test", "-l", str(tmp_path / "clf"), "experiment=classifier_cnn_digits",
                 "data.image_size=8", "trainer.max_steps=2", "trainer.limit_val_batches=1",
                 "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null", "trainer.accelerator=cpu",
                 "trainer.devices=1"]
    run(compose_config(*parse(overrides)))
    (classifier,) = (tmp_path / "clf").iterdir()
    out = tmp_path / "eval.json"
    command = [sys.executable, "scripts/evaluate.py", "--ckpt", str(trained_run), "--classifier", str(classifier),
               "--sampler", "ddim:2", "dpmpp:3", "--n_samples", "30", "--batch_size", "16", "--scale", "2",
               "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddim", 2), ("dpmpp", 3)]
    assert all(r["fid"] >= 0 and 0 <= r["cond_acc"] <= 1 and r["sec_per_image"] > 0 for r in rows)
    assert out.with_suffix(".md").read_text().startswith("| sampler | steps |")
    clf = subprocess.run([sys.executable, "scripts/evaluate.py", "--ckpt", str(classifier)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert clf.returncode == 0 and "| label |" in clf.stdout


def test_compile_option_compiles_the_trained_network_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[torch.nn.Module] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: compiled.append(self))
    model = tiny_ddpm(compile=True)
    keys = set(model.state_dict())
    model.on_fit_start()
    assert compiled == [model.unet] and set(model.state_dict()) == keys
    tiny_ddpm().on_fit_start()
    assert compiled == [model.unet]
