"""Checkpoints that survive interruption: atomic writes, save on Ctrl-C/SIGTERM/SIGUSR1/exception, RNG state, and
a ModelCheckpoint that keeps ``last.ckpt`` current across resumes and moved run directories."""

from __future__ import annotations

import os
import random
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from pixelforge.checkpoints import explain
from pixelforge.runs import moved


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside the target and renames it, so a crash mid-write
    leaves the previous ``last.ckpt`` intact; a checkpoint that cannot be read raises CheckpointError naming it."""

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise
        except Exception as error:  # torch's message would advise weights_only=False
            raise explain(path, error) from None

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if get_filesystem(path).protocol not in ("file", ("file", "local")):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        tmp = Path(name)
        try:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())  # on disk before the rename, so even a power cut leaves a whole file
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint for run directories that are stopped, resumed and moved.

    ``last.ckpt`` is the latest state after every epoch, whether or not the monitored metric improved, and is always
    overwritten in place: with Lightning's version counter, a ``last.ckpt`` written by an
    earlier process (after SIGTERM or Ctrl-C) makes the resumed run write ``last-v1.ckpt``, and the next ``-r``
    silently restarts from the stale file. A checkpoint restored from a run directory that has since moved has the
    paths it remembers (best, top-k, last) moved along, so top-k pruning and testing the best model keep working.
    """

    def __init__(self, *args: Any, enable_version_counter: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, enable_version_counter=enable_version_counter, **kwargs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self.save_last_now(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self.save_last_now(trainer)

    def save_last_now(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` if this step has not: since Lightning 2.6 ModelCheckpoint writes it only with a top-k
        checkpoint, so a run whose monitored metric stopped improving kept a stale ``last.ckpt`` (what ``-r``
        resumes and every script loads)."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key, so checkpoints of runs made before this class resume with their state."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:
            state_dict = dict(state_dict, dirpath=new)
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if state_dict.get(key):
                    state_dict[key] = moved(state_dict[key], old, new)
            state_dict["best_k_models"] = {moved(path, old, new): score
                                           for path, score in state_dict.get("best_k_models", {}).items()}
        super().load_state_dict(state_dict)


class SaveOnInterrupt(L.Callback):
    """Saves ``last.ckpt`` when training stops early and on a cluster's pre-emption notice.

    - Ctrl-C inside a training batch lets the batch finish, saves, then stops (a second Ctrl-C stops at once);
      elsewhere it stops at once and the exception path saves.
    - SIGTERM (Lightning stops at the end of the batch) and any exception save, then the error goes on.
    - SIGUSR1 saves at the end of the batch and training continues; a handler installed before (e.g.
      Lightning's SLURM auto-requeue) still runs.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        super().__init__()
        self.path = Path(dirpath) / filename
        self.training = False
        self.in_batch = False
        self.pending: str | None = None
        self.previous: dict[int, Any] = {}

    def save(self, trainer: L.Trainer, reason: str) -> None:
        """Write the full training state without collectives, so it works when other ranks are gone."""
        if trainer.is_global_zero:
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, self.path)
            rank_zero_info(f"{reason}: saved {self.path} at step {trainer.global_step}")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.training = True
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for signum in (signal.SIGINT, getattr(signal, "SIGUSR1", None)):
            if signum is not None:
                self.previous[signum] = signal.signal(signum, self.on_signal)

    def on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            if self.pending == "Ctrl-C" or not self.in_batch:
                raise KeyboardInterrupt
            rank_zero_info("Ctrl-C: saving last.ckpt after this batch (press again to stop at once)")
            self.pending = "Ctrl-C"
            return
        self.pending = self.pending or "SIGUSR1"
        previous = self.previous.get(signum)
        if callable(previous):
            previous(signum, frame)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        self.in_batch = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.in_batch = False
        reason, self.pending = self.pending, None
        if reason is None:
            return
        self.save(trainer, reason)
        if reason == "Ctrl-C":
            self.training = False  # saved already: the exception path must not save again
            raise KeyboardInterrupt

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.training = False
        self.restore_handlers()

    def restore_handlers(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.restore_handlers()
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
