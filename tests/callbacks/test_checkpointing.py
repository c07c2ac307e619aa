"""Interruption never loses work: atomic checkpoint writes, last.ckpt on exceptions and signals, RNG state."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock

import numpy as np
import pytest
import torch

import pixelforge.train
from pixelforge.callbacks import checkpointing
from pixelforge.callbacks.checkpointing import AtomicCheckpointIO, RNGState, SaveOnInterrupt
from pixelforge.cli import compose_config, parse

REPO = Path(__file__).resolve().parents[2]
QUIET = ["experiment=classifier_cnn_digits", "callbacks.image_logger=null", "callbacks.progress_bar=null",
         "callbacks.model_summary=null", "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0",
         "trainer.accelerator=cpu", "trainer.devices=1"]
MAX_EPOCHS = 1000
SIGNAL_TIMEOUT = 240.0  # hang guards, generous for slow CI machines
linux_only = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- AtomicCheckpointIO --------------------------------------------------------------------------------------


def test_atomic_save_replaces_the_old_file_only_once_the_new_one_is_complete(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"global_step": 1}, path)
    old = path.read_bytes()
    real_save = torch.save
    seen_during_write = []

    def save_and_look(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, f, *args, **kwargs)
        seen_during_write.append((Path(f.name), path.read_bytes()))  # the new bytes are written, not yet renamed

    monkeypatch.setattr(checkpointing.torch, "save", save_and_look)
    AtomicCheckpointIO().save_checkpoint({"global_step": 2}, path)
    ((written_to, target_bytes),) = seen_during_write
    assert written_to != path and written_to.parent == path.parent  # a temporary file beside the target ...
    assert target_bytes == old  # ... while last.ckpt still holds the previous checkpoint
    assert torch.load(path, weights_only=True) == {"global_step": 2}
    assert files_in(tmp_path) == ["last.ckpt"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["OSError", "KeyboardInterrupt"])
def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch, error: BaseException) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"global_step": 1}, path)
    old = path.read_bytes()

    def partial_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(old[: len(old) // 2])  # half a checkpoint, then the crash
        raise error

    monkeypatch.setattr(checkpointing.torch, "save", partial_save)
    with pytest.raises(type(error)):
        AtomicCheckpointIO().save_checkpoint({"global_step": 2}, path)
    assert path.read_bytes() == old
    assert files_in(path.parent) == ["last.ckpt"]  # no temporary file left behind


def test_atomic_save_creates_the_checkpoint_folder(tmp_path: Path) -> None:
    path = tmp_path / "new" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, str(path))
    assert torch.load(path, weights_only=True) == {"global_step": 3}
    assert files_in(path.parent) == ["last.ckpt"]


# --- an exception in training ----------------------------------------------------------------------------------


def test_exception_in_training_saves_last_ckpt_then_propagates(tmp_path: Path, monkeypatch) -> None:
    fail_at = 5  # inside the first epoch, so no epoch-end checkpoint can stand in for the saved one
    build_model = pixelforge.train.build_model
    at_failure: dict[str, torch.Tensor] = {}

    def build_failing_model(cfg: Any, trainer: Any) -> Any:
        model = build_model(cfg, trainer)
        training_step = model.training_step

        def failing_training_step(*args: Any, **kwargs: Any) -> Any:
            if model.global_step == fail_at:
                at_failure.update({k: v.detach().clone() for k, v in model.state_dict().items()})
                raise RuntimeError("boom at step 5")
            return training_step(*args, **kwargs)

        model.training_step = failing_training_step
        return model

    monkeypatch.setattr(pixelforge.train, "build_model", build_failing_model)
    cfg = compose_config(*parse(["-t", "--no-test", "-l", str(tmp_path), *QUIET, "trainer.max_epochs=1"]))
    with pytest.raises(RuntimeError, match="boom at step 5"):
        pixelforge.train.run(cfg)
    checkpoints = Path(cfg.run_dir) / "checkpoints"
    assert files_in(checkpoints) == ["last.ckpt"]  # and no temporary file
    ckpt = torch.load(checkpoints / "last.ckpt", weights_only=True)  # loadable the way a resume loads it
    assert ckpt["global_step"] == fail_at and ckpt["epoch"] == 0
    assert at_failure and ckpt["state_dict"].keys() == at_failure.keys()
    for key, value in at_failure.items():
        torch.testing.assert_close(ckpt["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]  # the full training state, not just the weights
    assert "RNGState" in ckpt["callbacks"]


def mock_trainer(global_step: int = 7) -> SimpleNamespace:
    dump = Mock(return_value={"global_step": global_step})
    return SimpleNamespace(is_global_zero=True, global_step=global_step,
                           _checkpoint_connector=SimpleNamespace(dump_checkpoint=dump),
                           strategy=SimpleNamespace(checkpoint_io=AtomicCheckpointIO()))


def test_exception_before_training_started_leaves_last_ckpt_alone(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"the checkpoint a resumed run has not restored yet")
    trainer = mock_trainer()
    SaveOnInterrupt(str(tmp_path)).on_exception(trainer, Mock(), RuntimeError("setup failed"))
    assert path.read_bytes() == b"the checkpoint a resumed run has not restored yet"
    trainer._checkpoint_connector.dump_checkpoint.assert_not_called()


@linux_only
def test_exception_after_training_started_saves_once(tmp_path: Path) -> None:
    """The counterpart of the test above with the same stand-in trainer: once training runs, errors save."""
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"old")
    trainer, callback = mock_trainer(global_step=7), SaveOnInterrupt(str(tmp_path))
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        callback.on_train_start(trainer, Mock())
        callback.on_exception(trainer, Mock(), RuntimeError("boom"))
        callback.on_exception(trainer, Mock(), RuntimeError("again"))  # e.g. teardown failing after the error
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert torch.load(path, weights_only=True) == {"global_step": 7}
    trainer._checkpoint_connector.dump_checkpoint.assert_called_once_with(weights_only=False)


# --- signals, in a real training process ------------------------------------------------------------------------


class Training:
    """``python main.py -t ...`` for 1000 epochs in a subprocess; only SaveOnInterrupt writes ``last.ckpt``."""

    def __init__(self, logdir: Path) -> None:
        self.logdir, self.log = logdir, logdir.parent / f"{logdir.name}.log"
        argv = [sys.executable, "main.py", "-t", "--no-test", "-l", str(logdir), *QUIET,
                f"trainer.max_epochs={MAX_EPOCHS}", "callbacks.model_checkpoint.save_last=false"]
        env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", pixelforge.train.RUN_DIR_ENV)}
        env["OMP_NUM_THREADS"] = "1"  # two of these run at once beside the test process
        # Python turns SIGINT into KeyboardInterrupt only where it was not ignored at start, and an ignored SIGINT
        # (pytest started as a background job) would be inherited: catching it here makes it SIG_DFL in the child.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with open(self.log, "wb") as log:  # a file, not a pipe: an unread pipe would block the child
                self.process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        self.steps_per_epoch = 0

    @property
    def last(self) -> Path:
        (run_dir,) = self.logdir.iterdir()
        return run_dir / "checkpoints" / "last.ckpt"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = SIGNAL_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"training exited ({self.process.returncode}) before {what}:\n" \
                                                f"{self.output()}"
            assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s:\n{self.output()}"
            time.sleep(0.05)

    def wait_until_training(self) -> None:
        """Under way: an epoch is done and its top-k checkpoint written."""
        names: list[str] = []

        def epoch_done() -> bool:  # the names, not the files: top-k may delete a file any time
            names.extend(p.stem for p in self.logdir.glob("*/checkpoints/epoch=*.ckpt"))
            return bool(names)

        self.wait_for(epoch_done, "first epoch checkpoint", timeout=2 * SIGNAL_TIMEOUT)
        name = names[0]  # "epoch={epoch:03d}-step={step:06d}"
        epoch, step = (int(part.split("=")[1]) for part in name.split("-"))
        self.steps_per_epoch = step // (epoch + 1)
        assert self.steps_per_epoch > 0, name

    def last_step(self) -> int | None:
        return torch.load(self.last, weights_only=True)["global_step"] if self.last.exists() else None

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        try:
            return self.process.wait(SIGNAL_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"training still running {SIGNAL_TIMEOUT:.0f} s after signal {signum}:\n{self.output()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def trainings(tmp_path_factory: pytest.TempPathFactory):
    """Both signal tests' processes, started together so that their start-up (imports, data) overlaps."""
    processes = {name: Training(tmp_path_factory.mktemp(name) / "logs") for name in ("usr1_term", "ctrl_c")}
    yield processes
    for process in processes.values():
        process.kill()


def assert_saved_mid_training(training: Training, at_least: int) -> int:
    """``last.ckpt`` exists, is whole, holds a step >= ``at_least`` and is not the end of training; no temp files."""
    assert training.last.exists(), f"no last.ckpt after the signal:\n{training.output()}"
    ckpt = torch.load(training.last, weights_only=True)
    assert at_least <= ckpt["global_step"] < MAX_EPOCHS * training.steps_per_epoch, ckpt["global_step"]
    assert ckpt["epoch"] < MAX_EPOCHS - 1
    if training.process.poll() is not None:  # while it runs, a top-k save may have its temporary file open
        leftovers = [n for n in files_in(training.last.parent) if n != "last.ckpt" and not n.startswith("epoch=")]
        assert not leftovers
    return ckpt["global_step"]


@linux_only
def test_sigusr1_saves_and_training_goes_on_then_sigterm_saves_and_stops(trainings: dict[str, Training]) -> None:
    training = trainings["usr1_term"]
    training.wait_until_training()
    assert not training.last.exists()  # save_last=false: only SaveOnInterrupt writes last.ckpt

    training.process.send_signal(signal.SIGUSR1)
    training.wait_for(training.last.exists, "last.ckpt after SIGUSR1")
    first = assert_saved_mid_training(training, at_least=training.steps_per_epoch)

    training.process.send_signal(signal.SIGUSR1)  # training went on: a second notice saves a later step
    training.wait_for(lambda: (training.last_step() or 0) > first, "later last.ckpt after a second SIGUSR1")
    second = assert_saved_mid_training(training, at_least=first + 1)

    training.last.unlink()
    code = training.stop(signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, training.output()
    assert_saved_mid_training(training, at_least=second)


@linux_only
def test_ctrl_c_saves_last_ckpt_and_stops(trainings: dict[str, Training]) -> None:
    training = trainings["ctrl_c"]
    training.wait_until_training()
    assert not training.last.exists()
    code = training.stop(signal.SIGINT)
    assert code == 128 + signal.SIGINT, training.output()
    assert f"stopped by Ctrl-C; continue with: python main.py -t -r {training.last.parents[1]}" in training.output()
    assert_saved_mid_training(training, at_least=training.steps_per_epoch)


# --- RNGState ----------------------------------------------------------------------------------------------------


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def draws() -> tuple[float, np.ndarray, float, torch.Tensor]:
    return random.random(), np.random.rand(3), np.random.standard_normal(), torch.rand(3)


def test_rng_state_round_trips_through_a_weights_only_checkpoint() -> None:
    seed_all(1)
    np.random.standard_normal()  # an odd number of gaussian draws leaves one cached: that must be restored too
    callback = RNGState()
    buffer = io.BytesIO()
    torch.save(callback.state_dict(), buffer)
    expected = draws()

    seed_all(2)
    perturbed = draws()
    assert perturbed[0] != expected[0] and not torch.equal(perturbed[3], expected[3])

    buffer.seek(0)
    callback.load_state_dict(torch.load(buffer, weights_only=True))
    restored = draws()
    assert restored[0] == expected[0]
    np.testing.assert_array_equal(restored[1], expected[1])
    assert restored[2] == expected[2]
    assert torch.equal(restored[3], expected[3])


def test_last_ckpt_is_the_latest_epoch_when_the_monitored_metric_stops_improving(tmp_path: Path) -> None:
    """Lightning 2.6 writes last.ckpt only beside a top-k checkpoint; a run's last.ckpt must still be its end."""
    from pixelforge.train import run

    # the loss falls, so "max" keeps epoch 0 as the best and no later top-1 checkpoint is written
    run(compose_config(*parse(["-t", "--no-test", "-l", str(tmp_path), *QUIET, "trainer.max_epochs=3",
                               "callbacks.model_checkpoint.save_top_k=1", "callbacks.model_checkpoint.monitor=val/loss",
                               "callbacks.model_checkpoint.mode=max"])))
    (run_dir,) = tmp_path.iterdir()
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, mmap=True)
    assert last["epoch"] == 2
    assert [p.name for p in (run_dir / "checkpoints").glob("epoch=000-*")]  # the best stayed epoch 0
