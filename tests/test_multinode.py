"""Two "nodes" on this machine: two launches of main.py with NODE_RANK 0 and 1, MASTER_ADDR=127.0.0.1, gloo, as
a per-node launch (or SLURM, torchrun) starts them. They train into one run directory, agree on the weights, and
the run resumes the same way."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: list[str], logdir: Path) -> list[subprocess.CompletedProcess]:
    """Both nodes, started together with one thread each; their results once both have ended."""
    port = str(free_port())
    command = [sys.executable, "main.py", *args, "trainer.accelerator=cpu", "trainer.devices=1",
               "trainer.num_nodes=2", "trainer.strategy=ddp", "trainer.limit_val_batches=1",
               "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null",
               "+callbacks.digest._target_=fault_injection.WeightsDigest", "-l", str(logdir)]
    nodes = []
    for node in range(2):
        env = {**os.environ, "NODE_RANK": str(node), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
        nodes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = []
    for process in nodes:
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    for node, result in enumerate(results):
        assert result.returncode == 0, f"node {node}:\n{result.stderr[-3000:]}"
    return results


def digests(run_dir: Path) -> list[str]:
    return [(run_dir / f"digest-rank{rank}.txt").read_text() for rank in range(2)]


@pytest.mark.slow
def test_two_nodes_train_into_one_run_directory_agree_on_the_weights_and_resume(tmp_path: Path) -> None:
    launch(["-t", "experiment=classifier_cnn_digits", "trainer.max_steps=3"], tmp_path)
    (run_dir,) = [path for path in tmp_path.iterdir() if not path.name.startswith(".")]
    assert list((tmp_path / ".launches").iterdir()) == []  # the hand-off file is removed when the run ends
    first = digests(run_dir)
    assert first[0] == first[1] and first[0].split()[1] == "3"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3

    launch(["-r", str(run_dir), "-t", "trainer.max_steps=5"], tmp_path)
    assert [path.name for path in tmp_path.iterdir() if not path.name.startswith(".")] == [run_dir.name]
    resumed = digests(run_dir)
    assert resumed[0] == resumed[1] != first[0] and resumed[0].split()[1] == "5"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 5


def test_num_nodes_that_do_not_match_torchruns_world_size_are_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    from pixelforge.cli import main

    for key, value in {"WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)
    assert main(["-t", "-l", str(tmp_path), "experiment=classifier_cnn_digits", "trainer.accelerator=cpu",
                 "trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp"]) == 2
    error = capsys.readouterr().err
    assert "trainer.num_nodes=2 x trainer.devices=1 is 2 processes, but the launcher started WORLD_SIZE=4" in error
    assert list(tmp_path.iterdir()) == []  # refused before anything is written (no hang waiting for ranks)
