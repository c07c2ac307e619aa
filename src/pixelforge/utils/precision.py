"""``trainer.precision=auto``: the reduced precision this machine computes in natively, chosen when a run starts.

On a CPU, bf16 autocast pays only where the cores have bf16 units (AVX512-BF16, AMX): elsewhere oneDNN emulates it
and a step is slower than in fp32. GPUs take bf16 where they support it, else fp16 with a loss scaler.
"""

from __future__ import annotations

import torch

AUTO = "auto"


def cpu_bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def target_device(accelerator: str) -> str:
    """The device kind Lightning's ``accelerator`` picks here: cuda, mps, cpu, or the accelerator named."""
    if accelerator == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    return "cuda" if accelerator == "gpu" else accelerator


def auto_precision(accelerator: str) -> tuple[str, str]:
    """(Lightning precision, why) for ``trainer.precision=auto`` on ``accelerator``."""
    device = target_device(accelerator)
    if device == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", "the GPU supports bf16"
        return "16-mixed", "the GPU has no bf16"
    if device == "cpu":
        if cpu_bf16_units():
            return "bf16-mixed", "this CPU has bf16 units (AVX512-BF16 or AMX)"
        return "32-true", "this CPU has no bf16 units, so bf16 would be emulated and slower than fp32"
    return "32-true", f"accelerator {device}"
