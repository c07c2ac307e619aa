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
