"""``trainer.precision=auto``: the reduced precision this machine computes in natively, chosen when a run starts.

On a CPU, bf16 autocast pays only where the cores have bf16 units (AVX512-BF16, AMX): elsewhere oneDNN emulates it
and a step is slower than in fp32. GPUs take bf16 where they support it, else fp16 with a loss scaler. Mixed
precision runs under ``ClippingMixedPrecision``, so the recipes' gradient clipping works with their fused AdamW.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType

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


class ClippingMixedPrecision(MixedPrecision):
    """Lightning's mixed precision, clipping the gradients of fused optimizers too, which Lightning's refuses (and
    fused AdamW is the recipes' optimizer). Under bf16 there is no loss scale, so the gradients are already the
    true ones. Under fp16 they are unscaled here first; the scaler's step then tells the fused optimizer they
    are unscaled, so it does not unscale them again."""

    def clip_gradients(self, optimizer: torch.optim.Optimizer, clip_val: float = 0.0,
                       gradient_clip_algorithm: GradClipAlgorithmType = GradClipAlgorithmType.NORM) -> None:
        # torch's fused optimizers set _step_supports_amp_scaling: they unscale inside their step
        if clip_val > 0 and self.scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            self.scaler.unscale_(optimizer)
        Precision.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm)


def allow_fused_clipping(trainer: L.Trainer) -> None:
    """Put ``trainer``'s mixed precision (not FSDP's or another strategy's own) under ``ClippingMixedPrecision``."""
    plugin = trainer.strategy.precision_plugin
    if type(plugin) is MixedPrecision:
        trainer.strategy.precision_plugin = ClippingMixedPrecision(plugin.precision, plugin.device, plugin.scaler)
