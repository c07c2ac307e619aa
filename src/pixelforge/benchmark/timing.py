"""Clocks, peak memory and FLOP counts: interleaved medians that load from other processes falls on alike."""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pixelforge.utils.precision import cpu_bf16_units

Denoise = Callable[[Tensor, Tensor, Any], Tensor]


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so a wall-clock interval covers the work on an asynchronous device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast for "bf16" (what ``trainer.precision=bf16-mixed`` runs under), a disabled context for "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def precisions(device: torch.device) -> list[str]:
    """fp32, plus bf16 where the device runs it (every CPU through autocast; CUDA when it supports bf16)."""
    return ["fp32", "bf16"] if device.type == "cpu" or torch.cuda.is_bf16_supported() else ["fp32"]


def default_precisions(device: torch.device) -> list[str]:
    """What the benchmark times unless told: fp32, plus bf16 where the device computes it natively (a CPU without
    bf16 units emulates it, slower than fp32; ``--precision bf16`` still times that)."""
    if device.type == "cpu" and not cpu_bf16_units():
        return ["fp32"]
    return precisions(device)


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, iters: int
                ) -> dict[str, list[float]]:
    """Seconds per call of each function, calls alternating between them after ``warmup`` untimed calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _proc_status_kb(key: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak memory one call of ``fn`` adds: CUDA allocator peak, or on CPU peak RSS over the RSS before (Linux)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS starts from live memory
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _proc_status_kb("VmRSS")
        fn()
        return (_proc_status_kb("VmHWM") - base) / 1024
    except (OSError, AttributeError):
        return None


def ms(times: list[float] | None) -> float | None:
    """Median of seconds, in milliseconds."""
    return None if not times else 1e3 * statistics.median(times)


def spread(times: list[float] | None) -> list[float] | None:
    """[min, max] of seconds, in milliseconds."""
    return None if not times else [1e3 * min(times), 1e3 * max(times)]


def count_params(model: nn.Module | None) -> int | None:
    """Number of parameters (None for no model), to show that ours and a peer are the same size."""
    return None if model is None else sum(p.numel() for p in model.parameters())


def matmul_gflops(device: torch.device, precision: str, n: int, warmup: int, iters: int) -> float:
    """Dense n x n matmul rate in this run: the processor's practical ceiling for these models."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = interleaved({"mm": lambda: a @ b}, device, warmup, max(iters, 3))
    return 2 * n**3 / statistics.median(times["mm"]) / 1e9


def step_flops(step: Callable[[], Any]) -> int:
    """FLOPs torch's flop counter attributes to one call of ``step`` (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


class TimedDenoiser:
    """A denoiser that adds the wall time of each of its calls to ``seconds``, to split model from sampler time."""

    def __init__(self, denoise: Denoise, device: torch.device) -> None:
        self.denoise, self.device, self.seconds = denoise, device, 0.0

    def __call__(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        sync(self.device)
        start = time.perf_counter()
        out = self.denoise(x, t, cond)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        return out
