"""The prepared accelerator check of Stable Diffusion runs end to end (on a toy of the architecture, on the CPU)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")


def test_the_device_check_writes_its_numbers(tmp_path: Path) -> None:
    script = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "sd_device_check.py"))
    assert script["main"](["--tiny", "--steps", "2", "--lora_batch", "1", "--out", str(tmp_path / "out.json")]) == 0
    rows = json.loads((tmp_path / "out.json").read_text())
    assert rows["unet_max_abs_diff"] < 1e-5 * max(1.0, rows["unet_max_abs"]) * 100
    assert rows["pixelforge_s_per_image"] > 0 and rows["diffusers_s_per_image"] > 0 and rows["lora_step_s"] > 0
