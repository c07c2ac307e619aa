"""Checkpoints that survive interruption: atomic writes, save on Ctrl-C/SIGTERM/SIGUSR1/exception, RNG state."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside the target and renames it, so a crash mid-write
    leaves the previous ``last.ckpt`` intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if get_filesystem(path).protocol not in ("file", ("file", "local")):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class SaveOnInterrupt(L.Callback):
    """Saves ``last.ckpt`` when training stops early: Ctrl-C, SIGTERM or an exception (then the error goes on),
    and on SIGUSR1 (a cluster's pre-emption notice), after which training continues."""

    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        super().__init__()
        self.path = Path(dirpath) / filename
        self.training = False
        self.usr1_received = False
        self.previous_handler: Any = None

    def save(self, trainer: L.Trainer, reason: str) -> None:
        """Write the full training state without collectives, so it works when other ranks are gone."""
        if trainer.is_global_zero:
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, self.path)
            rank_zero_info(f"{reason}: saved {self.path} at step {trainer.global_step}")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.training = True
        if hasattr(signal, "SIGUSR1"):
            self.previous_handler = signal.signal(signal.SIGUSR1, self.on_usr1)

    def on_usr1(self, signum: int, frame: Any) -> None:
        self.usr1_received = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self.usr1_received:
            self.usr1_received = False
            self.save(trainer, "SIGUSR1")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.training = False
        if self.previous_handler is not None:
            signal.signal(signal.SIGUSR1, self.previous_handler)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Before on_train_start a resumed run has not restored its weights yet: saving would clobber last.ckpt.
        if not self.training:
            return
        self.training = False
        try:
            self.save(trainer, f"training stopped by {type(exception).__name__}")
        except Exception as error:  # the original exception matters more than this one
            rank_zero_warn(f"could not save {self.path} after {type(exception).__name__}: {error}")


class RNGState(L.Callback):
    """Stores the Python, NumPy and torch RNG states in checkpoints and restores them on resume, so dropout and
    augmentation after a resume match an uninterrupted run."""

    def state_dict(self) -> dict[str, Any]:
        """Plain types and tensors only, so the checkpoint loads with ``weights_only=True``."""
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        numpy_state = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                       "cached": cached}
        state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        numpy_state = state["numpy"]
        np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["cached"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
