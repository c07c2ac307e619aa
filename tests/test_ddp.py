"""Two-process DDP on CPU (gloo): the path real users take to many GPUs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_two_process_ddp_trains_into_one_run_directory(tmp_path: Path) -> None:
    command = [sys.executable, "main.py", "-t", "experiment=classifier_cnn_digits", "trainer=ddp",
               "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=3", "trainer.limit_val_batches=1",
               "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null",
               "-l", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = list(tmp_path.iterdir())
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3
    assert "DDPStrategy" in result.stdout and "test/acc" in result.stdout
