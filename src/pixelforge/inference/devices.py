"""Where and in which precision to sample: the fastest device here, and autocast for ``--precision autocast``
or ``half``."""

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


PRECISIONS = ("full", "autocast", "half")


def half_dtype(device: torch.device) -> torch.dtype:
    """The reduced precision of ``device``: bf16 on the CPU (fp16 matmuls are slow there), fp16 elsewhere."""
    return torch.bfloat16 if device.type == "cpu" else torch.float16


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in ``half_dtype(device)`` for ``precision`` "autocast" or "half" (half-precision
    weights need it), else none."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision == "full":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=half_dtype(device))
