"""trainer.precision=auto: bf16 only where the machine computes it natively, chosen when the run starts, said, and
saved with the run; the benchmark times bf16 by default only there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from omegaconf import OmegaConf
from test_threads import TINY

from pixelforge.benchmark import timing
from pixelforge.cli import main
from pixelforge.utils import precision
from pixelforge.utils.precision import ClippingMixedPrecision


def test_a_cpu_takes_bf16_only_with_bf16_units(monkeypatch) -> None:
    for module in (precision, timing):
        monkeypatch.setattr(module, "cpu_bf16_units", lambda: False)
    assert precision.auto_precision("cpu")[0] == "32-true"
    assert timing.default_precisions(torch.device("cpu")) == ["fp32"]
    for module in (precision, timing):
        monkeypatch.setattr(module, "cpu_bf16_units", lambda: True)
    assert precision.auto_precision("cpu") == ("bf16-mixed", "this CPU has bf16 units (AVX512-BF16 or AMX)")
    assert timing.default_precisions(torch.device("cpu")) == ["fp32", "bf16"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert precision.auto_precision("auto")[0] == "bf16-mixed"


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_a_gpu_takes_bf16_where_it_supports_it_else_fp16(monkeypatch, bf16: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert precision.auto_precision("gpu")[0] == expected
    assert precision.auto_precision("auto")[0] == expected


def test_other_accelerators_stay_in_fp32() -> None:
    assert precision.auto_precision("mps") == ("32-true", "accelerator mps")


@pytest.mark.parametrize(("units", "expected"), [(False, "32-true"), (True, "bf16-mixed")])
def test_a_run_says_and_saves_the_precision_it_chose(tmp_path: Path, caplog, monkeypatch, units: bool,
                                                     expected: str) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: units)
    assert main(["-t", "-l", str(tmp_path), *TINY, "threads=1", "trainer.precision=auto"]) == 0
    assert f"Precision: {expected} (trainer.precision=auto: this CPU has" in caplog.text
    (saved,) = tmp_path.glob("*/configs/config.yaml")
    assert OmegaConf.load(saved).trainer.precision == expected


def clipped_step(plugin: MixedPrecision | None) -> tuple[float, torch.Tensor]:
    """The gradient norm after clipping to 1 (from far above) and the weights after one fused AdamW step of a fixed
    loss: by hand in fp32 (``plugin`` None), else through ``plugin``'s loss scaling, clipping and scaled step, as
    Lightning runs them for a fused optimizer (which it leaves to unscale its gradients itself)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)
    loss = 100 * layer(torch.randn(16, 8)).square().mean()
    scaler = plugin.scaler if plugin is not None else None
    (loss if scaler is None else scaler.scale(loss)).backward()
    if plugin is None:
        torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0)
    else:
        plugin.clip_gradients(optimizer, 1.0)
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in layer.parameters()])).item()
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return norm, layer.weight.detach()


@pytest.mark.parametrize("mode", ["bf16-mixed", "16-mixed"])
def test_fused_optimizers_clip_under_mixed_precision(mode: str) -> None:
    """Lightning refuses to clip a fused optimizer's gradients under mixed precision (the recipes' fused AdamW with
    gradient_clip_val crashed at step one in bf16); ClippingMixedPrecision clips them as plain fp32 does, and
    under fp16's loss scale unscales them once."""
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        clipped_step(MixedPrecision(mode, "cpu"))
    norm, weights = clipped_step(ClippingMixedPrecision(mode, "cpu"))
    assert norm == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(weights, clipped_step(None)[1])


def test_a_recipe_clips_a_fused_adamw_in_mixed_precision(tmp_path: Path) -> None:
    """The diffusion and CLIP recipes' fused AdamW with gradient_clip_val trains under bf16 mixed precision (it
    crashed at step one, on a GPU and under trainer.precision=auto). The smoke tests of the recipes run in fp32,
    where this cannot show; Lightning runs 16-mixed as bf16 on a CPU, so fp16's path is the test above."""
    assert main(["-t", "-l", str(tmp_path), *TINY, "threads=1", "optimizer=adamw", "trainer.gradient_clip_val=1.0",
                 "trainer.precision=bf16-mixed"]) == 0
