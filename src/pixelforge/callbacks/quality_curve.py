"""Time to quality: the strict shape fit of a text-to-image model of the shapes set against training wall time."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from pixelforge.data.shapes import ShapesDataset
from pixelforge.metrics.features import ClassifierFeatures
from pixelforge.metrics.generation import conditional_accuracy, dataset_conditions, fit_labels, generate
from pixelforge.metrics.shape_fidelity import THRESHOLD, shape_fidelity
from pixelforge.utils.plots import curve_figure


class QualityCurve(L.Callback):
    """Every ``every_n_steps`` training steps (and after the last), sample ``n_samples`` captions of ``split`` with
    the EMA weights and record their ``shape_fit`` (``metrics.shape_fidelity``) against the wall time training has
    taken so far, in ``<path>.json`` and ``<path>.png``. The callback's own sampling is left off the
    clock (each point says how much, cumulatively, in ``curve_seconds``), so the curve shows what training alone
    took to get there. A resumed run continues the curve, its clock from the last point. ``every_n_steps: 0``
    switches it off; ``classifier`` (a ``classifier_cnn_shapes`` run) adds the share of samples it reads right on
    every attribute.
    Sampling follows the model's image logging (``log_sampler``, ``log_guidance_scale``: what txt2img.py uses)
    unless ``sample_kwargs`` says otherwise; ``target`` is drawn as a dashed line.
    """

    def __init__(self, path: str, every_n_steps: int = 0, n_samples: int = 200, batch_size: int = 200,
                 split: str = "heldout", seed: int = 0, classifier: str | None = None,
                 sample_kwargs: dict[str, Any] | None = None, target: float = 0.95) -> None:
        super().__init__()
        if every_n_steps < 0 or n_samples < 1:
            raise ValueError(f"QualityCurve needs every_n_steps >= 0 (0: off) and n_samples >= 1; got "
                             f"every_n_steps={every_n_steps}, n_samples={n_samples}")
        self.every_n_steps, self.n_samples, self.batch_size = every_n_steps, n_samples, batch_size
        self.split, self.seed, self.classifier_run, self.path = split, seed, classifier, path
        self.sample_kwargs, self.target = dict(sample_kwargs or {}), target
        self.points: list[dict[str, Any]] = []
        self.start = self.off_clock = 0.0
        self.measured_step = -1
        self.classifier = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.every_n_steps:
            return
        dataset = trainer.datamodule.build(self.split)
        if not isinstance(dataset, ShapesDataset) or not getattr(pl_module, "text_conditioned", False):
            raise ValueError("callbacks.quality_curve judges text-to-image samples of the shapes set (e.g. "
                             f"ldm_shapes_txt2img); this run has a {type(pl_module).__name__} on "
                             f"{type(dataset).__name__}. Set callbacks.quality_curve.every_n_steps=0")
        if self.classifier_run is not None:
            self.classifier = ClassifierFeatures(self.classifier_run)
        self.sample_kwargs = {"sampler": pl_module.log_sampler["name"], "steps": pl_module.log_sampler.get("steps"),
                              "scale": pl_module.log_guidance_scale,
                              "guidance_rescale": pl_module.log_guidance_rescale, **self.sample_kwargs}
        saved = Path(self.path).with_suffix(".json")  # a resumed run (-r) continues its curve and its clock
        self.points = json.loads(saved.read_text()) if saved.is_file() else []
        last = self.points[-1] if self.points else {"train_seconds": 0.0, "curve_seconds": 0.0}
        self.off_clock, self.measured_step = last["curve_seconds"], -1
        self.start = time.perf_counter() - last["train_seconds"] - self.off_clock

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_steps:
            self.measure(trainer, pl_module)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Add one point (on rank 0) and rewrite the JSON and the PNG curve, once per optimizer step (batches that
        accumulate gradients share one)."""
        if trainer.global_step == self.measured_step:
            return
        self.measured_step = trainer.global_step
        begun = time.perf_counter()
        if trainer.is_global_zero:
            point = {"step": trainer.global_step, "epoch": trainer.current_epoch,
                     "train_seconds": begun - self.start - self.off_clock, **self.judge(trainer, pl_module),
                     "curve_seconds": self.off_clock + time.perf_counter() - begun}
            self.points.append(point)
            rank_zero_info(f"quality curve: step {point['step']}, {point['train_seconds']:.0f} s: "
                           f"shape_fit {point['shape_fit']:.3f}")
            self.write()
        self.off_clock += time.perf_counter() - begun

    def judge(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """The shape fit (and the classifier's all-attribute accuracy) of ``n_samples`` samples of the split."""
        dataset = trainer.datamodule.build(self.split)
        keys = list(self.classifier.classifier.targets) if self.classifier is not None else []
        labels, prompts = dataset_conditions(dataset, self.n_samples, keys, pl_module.conditioner.text_key,
                                             self.seed)
        was_training = pl_module.training
        pl_module.eval()
        images = generate(pl_module, self.n_samples, None, prompts, pl_module.conditioner.text_key,
                          self.batch_size, self.seed, **self.sample_kwargs)
        pl_module.train(was_training)
        results, _ = shape_fidelity(images, fit_labels(dataset, self.n_samples, self.seed))
        if self.classifier is not None:
            accuracy = conditional_accuracy(self.classifier.to(pl_module.device), images, labels, keys,
                                            self.batch_size, pl_module.device)
            results["all_attributes"] = accuracy["cond_acc"]
        return results

    def write(self) -> None:
        path = Path(self.path)
        path.with_suffix(".json").write_text(json.dumps(self.points, indent=2))
        minutes = [p["train_seconds"] / 60 for p in self.points]
        curves = {"shape fit": [p["shape_fit"] for p in self.points]}
        if "all_attributes" in self.points[-1]:
            curves["all attributes (classifier)"] = [p["all_attributes"] for p in self.points]
        curve_figure(minutes, curves, path.with_suffix(".png"), "training wall time (min)",
                     f"share of {self.split} samples", f"time to quality: {self.n_samples} samples, IoU >= "
                     f"{THRESHOLD}", target=self.target)
