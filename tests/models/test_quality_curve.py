"""QualityCurve: the strict shape fit judged on what the model draws for the split's captions (the dataset's own
renders fit, blank images do not), written against training time as JSON and PNG; refused on other models."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from test_latent_cache import shapes
from test_latent_diffusion import tiny_ldm
from torch import nn

from pixelforge.callbacks.quality_curve import QualityCurve
from pixelforge.cli import compose_config, parse
from pixelforge.train import run


class Renderer(nn.Module):
    """A stand-in text-to-image model that draws, for each caption, the split's own render of it (``blank``:
    black images)."""

    text_conditioned = True
    log_sampler = {"name": "dpmpp", "steps": 20}
    log_guidance_scale = 3.0
    log_guidance_rescale = 0.7
    device = torch.device("cpu")

    def __init__(self, dataset, blank: bool = False) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.renders = {item["caption"]: item["image"] for item in (dataset[i] for i in range(len(dataset)))}
        self.blank, self.conditioner, self.calls = blank, SimpleNamespace(text_key="caption"), []

    def sample(self, n: int, conditions: dict, **kwargs) -> torch.Tensor:
        self.calls.append(kwargs)
        images = torch.stack([self.renders[caption] for caption in conditions["caption"]])
        return -torch.ones_like(images) if self.blank else images


def judge(logdir: Path) -> Path:
    """A two-step classifier_cnn_shapes run at 16 px: the attribute judge (untrained, but it predicts)."""
    run(compose_config(*parse(["-t", "--no-test", "-l", str(logdir), "experiment=classifier_cnn_shapes",
                               "data.image_size=16", "data.dataset.num_samples=16", "trainer.max_steps=2",
                               "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0",
                               "callbacks.progress_bar=null", "trainer.accelerator=cpu", "trainer.devices=1"])))
    (run_dir,) = logdir.iterdir()
    return run_dir


def judged(tmp_path: Path, blank: bool, classifier: Path | None = None) -> tuple[dict, Renderer]:
    datamodule = shapes()
    model = Renderer(datamodule.build("heldout"), blank)
    curve = QualityCurve(str(tmp_path / "curve"), every_n_steps=1, n_samples=12, batch_size=5,
                         classifier=classifier and str(classifier))
    trainer = SimpleNamespace(datamodule=datamodule)
    curve.on_fit_start(trainer, model)
    return curve.judge(trainer, model), model


def test_the_datasets_own_renders_fit_and_blank_images_do_not(tmp_path: Path) -> None:
    right, model = judged(tmp_path, blank=False)
    assert right["shape_fit"] == 1.0 and right["shape_iou"] == pytest.approx(1.0)
    assert model.calls[0]["scale"] == 3.0 and model.calls[0]["sampler"] == "dpmpp"  # what txt2img.py uses
    assert model.calls[0]["guidance_rescale"] == 0.7
    assert len(model.calls) == 3  # 12 samples in batches of 5
    blank, _ = judged(tmp_path, blank=True, classifier=judge(tmp_path / "judge"))
    assert blank["shape_fit"] == 0.0 and 0 <= blank["all_attributes"] <= 1  # and the judge read every attribute


def test_training_writes_the_curve_against_wall_time(tmp_path: Path) -> None:
    curve = QualityCurve(str(tmp_path / "curve"), every_n_steps=2, n_samples=4, batch_size=4,
                         sample_kwargs={"steps": 2})
    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[curve], default_root_dir=tmp_path)
    trainer.fit(tiny_ldm(), datamodule=shapes())
    points = json.loads((tmp_path / "curve.json").read_text())
    assert [p["step"] for p in points] == [2, 3]  # every 2 steps, and after the last
    assert 0 < points[0]["train_seconds"] < points[1]["train_seconds"]
    assert all(0 <= p["shape_fit"] <= 1 and "shape_fit/circle" in p or "shape_fit/square" in p for p in points)
    assert (tmp_path / "curve.png").stat().st_size > 0
    curve.on_fit_start(trainer, trainer.lightning_module)  # as a resumed run does: the curve goes on from there
    assert curve.points == points and curve.off_clock == points[-1]["curve_seconds"]


def test_other_models_are_refused_by_name(tmp_path: Path) -> None:
    curve = QualityCurve(str(tmp_path / "curve"), every_n_steps=10)
    trainer = SimpleNamespace(datamodule=shapes())
    with pytest.raises(ValueError, match="quality_curve.every_n_steps=0"):
        curve.on_fit_start(trainer, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="every_n_steps >= 0"):
        QualityCurve(str(tmp_path / "curve"), every_n_steps=-1)
