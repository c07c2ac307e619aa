"""Runs started as several processes by a launcher outside Lightning: torchrun, SLURM's ``srun``, or one
``main.py`` per node with ``NODE_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set.

Each such process composes its config and would name its own timestamped run directory. Global rank 0 makes the
directory and hands its path to the others through ``<logdir>/.launches/<launch key>``, a file every process of
the launch can find (the log directory is on storage the nodes share, as the checkpoints need) and no other
launch uses: the SLURM job and restart count, torchrun's rendezvous id, or the master address and port. Lightning's
own DDP children get the path from their parent's environment instead (``train.RUN_DIR_ENV``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

HANDOFF = ".launches"
STARTED = time.time()
# A hand-off file older than this before this process started is a crashed launch's, not this one's.
STALE_S = 600.0


def external_rank() -> int | None:
    """When an outside launcher started this process as one of several: 0 for the one that makes the run
    directory, more for the others (torchrun's ``RANK``, SLURM's ``SLURM_PROCID`` under several tasks, a per-node
    launch's ``NODE_RANK``); else None."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1 and "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    if "NODE_RANK" in env and "MASTER_ADDR" in env:
        return int(env["NODE_RANK"]) if int(env.get("LOCAL_RANK", "0")) == 0 else None
    return None


def world_size_mismatch(num_nodes: int, devices: object, environ: dict[str, str] | None = None) -> str | None:
    """What is wrong when torchrun started ``WORLD_SIZE`` processes but ``trainer.num_nodes`` x ``trainer.devices``
    (a number) asks for another count (Lightning would wait for processes that never come); else None."""
    env = os.environ if environ is None else environ
    launched = int(env.get("WORLD_SIZE", "1"))
    if launched <= 1 or "RANK" not in env or isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        return None
    if num_nodes * devices == launched:
        return None
    return (f"trainer.num_nodes={num_nodes} x trainer.devices={devices} is {num_nodes * devices} processes, but the "
            f"launcher started WORLD_SIZE={launched}: set trainer.num_nodes to the number of nodes and "
            f"trainer.devices to the processes per node (their product {launched})")


def launch_key() -> str:
    """What every process of this launch shares and no other launch does."""
    env = os.environ
    if "SLURM_JOB_ID" in env:
        return f"slurm-{env['SLURM_JOB_ID']}-{env.get('SLURM_RESTART_COUNT', '0')}"
    if env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return f"{env.get('MASTER_ADDR', 'localhost')}-{env.get('MASTER_PORT', 'default')}"


def handoff_file(logdir: str | Path) -> Path:
    return Path(logdir) / HANDOFF / launch_key()


def publish(logdir: str | Path, run_dir: Path) -> None:
    """Rank 0: tell the launch's other processes the run directory (written atomically)."""
    path = handoff_file(logdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(run_dir))
    os.replace(tmp, path)


def retract(logdir: str | Path) -> None:
    """Rank 0, when the run ends: remove the hand-off file, so a later launch with the same key never reads it."""
    handoff_file(logdir).unlink(missing_ok=True)


def receive(logdir: str | Path, timeout: float = 600.0) -> Path:
    """Ranks > 0: the run directory rank 0 published for this launch, waiting up to ``timeout`` seconds."""
    path = handoff_file(logdir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.stat().st_mtime >= STARTED - STALE_S:
            return Path(path.read_text())
        time.sleep(0.2)
    raise TimeoutError(f"rank 0 of this launch published no run directory at {path} within {timeout:.0f} s: "
                       "start every node with the same -l LOGDIR on storage they share, and the same MASTER_ADDR "
                       "and MASTER_PORT")
