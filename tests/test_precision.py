"""trainer.precision=auto: bf16 only where the machine computes it natively, chosen when the run starts, said, and
saved with the run; the benchmark times bf16 by default only there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_threads import TINY

from pixelforge.benchmark import timing
from pixelforge.cli import main
from pixelforge.utils import precision


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
