"""Where and in which precision to sample: the fastest device here, and autocast for ``--precision autocast``."""

from __future__ import annotations

import contextlib

import torch


def best_device() -> torch.device:
    """CUDA, else Apple's MPS, else the CPU: the fastest device this machine offers."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` for ``precision="autocast"`` (bf16 on the CPU, fp16 elsewhere), else none."""
    if precision != "autocast":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16)
