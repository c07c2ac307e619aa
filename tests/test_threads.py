"""Intra-op threads: chosen from the usable cores less the loader workers, overridable, logged, restored after the
run, and a bad value refused before a run directory exists."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pixelforge.cli import compose_config, main, parse
from pixelforge.train import run
from pixelforge.utils.threads import busy_warning, choose_threads, other_runnable, usable_cores

TINY = ["experiment=classifier_cnn_digits", "callbacks.progress_bar=null", "callbacks.model_summary=null",
        "trainer.num_sanity_val_steps=0", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_steps=1",
        "trainer.limit_val_batches=1", "--no-test"]


def test_the_choice_follows_cores_workers_and_overrides() -> None:
    cores = usable_cores()
    assert choose_threads(None, 0, environ={}) == (cores, f"{cores} usable cores - 0 loader workers")
    assert choose_threads(None, cores + 3, environ={})[0] == 1
    assert choose_threads(None, 0, environ={"OMP_NUM_THREADS": "3"}) == (3, "OMP_NUM_THREADS=3")
    assert choose_threads(5, 0, environ={"OMP_NUM_THREADS": "3"}) == (5, "threads=5")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=f"threads must be a positive integer or null .*got {bad!r}"):
            choose_threads(bad, 0)


def test_a_busy_machine_is_named_an_idle_one_is_not() -> None:
    assert busy_warning(2, 2, others=0) is None
    assert "2 thread(s) of other jobs are running on these 2 cores" in busy_warning(2, 2, others=2)
    assert busy_warning(1, 2, others=1) is None  # one thread beside one other thread fits


def test_a_busy_core_is_seen() -> None:
    if other_runnable() is None:
        pytest.skip("no /proc/loadavg")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert other_runnable() >= 1  # the spinner is always runnable; this reader is not counted
    finally:
        spinner.kill()


def test_a_run_uses_logs_and_gives_back_its_threads(tmp_path: Path, caplog, monkeypatch) -> None:
    before, real, calls = torch.get_num_threads(), torch.set_num_threads, []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    run(compose_config(*parse(["-t", "-l", str(tmp_path), *TINY, "threads=1"])))
    assert calls == [1, before] and torch.get_num_threads() == before
    assert "Threads: 1 intra-op (threads=1; threads=N overrides)" in caplog.text


def test_a_bad_thread_count_fails_before_a_run_directory_exists(tmp_path: Path, capsys) -> None:
    assert main(["-t", "-l", str(tmp_path), *TINY, "threads=0"]) != 0
    assert "threads must be a positive integer or null (one per usable core), got 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
