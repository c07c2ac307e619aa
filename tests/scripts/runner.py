"""Helpers for the script tests: train a tiny run on the 8x8 digits, run a script's ``main`` in this process."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

from pixelforge.cli import compose_config, parse
from pixelforge.train import run

REPO = Path(__file__).resolve().parents[2]
TINY = ["data=digits", "data.image_size=8", "trainer.max_steps=3", "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null", "trainer.accelerator=cpu",
        "trainer.devices=1"]


def train(logdir: Path, *overrides: str) -> Path:
    """Train a tiny run into ``logdir`` and return its run directory."""
    run(compose_config(*parse(["-t", "--no-test", "-l", str(logdir), *overrides, *TINY])))
    (run_dir,) = logdir.iterdir()
    return run_dir


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def script(name: str, *args: str) -> Result:
    """Run ``scripts/<name>``'s ``main`` in this process (no interpreter start-up), capturing its output."""
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), REPO / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
            print(exit_.code, file=err)
    return Result(code, out.getvalue(), err.getvalue())
