"""Faults that tests inject into real training runs through the config (``+callbacks.fault._target_=...``)."""

from __future__ import annotations

import os
import signal

import lightning as L


class SigtermAt(L.Callback):
    """Sends this process SIGTERM after optimizer step ``step``, as a cluster's scheduler would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class PoisonBatch(L.Callback):
    """Fills the images of training batch ``at`` (counted over the whole run) with NaN."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.seen == self.at:
            batch["image"].fill_(float("nan"))
        self.seen += 1


class WeightsDigest(L.Callback):
    """Writes ``<run dir>/digest-rank<global rank>.txt``, the sum of every weight, when training ends: the ranks
    of a data-parallel run must agree on it."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = sum(float(p.double().sum()) for p in pl_module.parameters())
        path = os.path.join(trainer.default_root_dir, f"digest-rank{trainer.global_rank}.txt")
        with open(path, "w") as file:
            file.write(f"{total!r} {trainer.global_step}\n")
