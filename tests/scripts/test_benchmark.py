"""Smoke test of scripts/benchmark.py: --quick without peers runs every case and writes well-formed records."""

from __future__ import annotations

import json
from pathlib import Path

from runner import script

KEYS = {"case", "precision", "ours_ms", "peer", "peer_ms", "ratio", "ours_params", "peer_params", "ours_spread_ms",
        "ours_peak_mb"}


def test_quick_benchmark_without_peers(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = script("benchmark.py", "--quick", "--no-peers", "--device", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "measuring pixelforge alone" in result.stdout
    records = json.loads(out.read_text())
    cases = {r["case"] for r in records}
    assert {"text_train", "text_forward", "uncond_train", "utilisation", "data_shapes", "data_digits"} <= cases
    assert any(case.startswith("sample_dpmpp") for case in cases) and any(c.startswith("sample_ddim") for c in cases)
    assert {r["precision"] for r in records} == {"fp32", "bf16"}
    for r in records:
        assert r.keys() >= KEYS, r["case"]
        assert r["ours_ms"] > 0, r
        assert r["peer_ms"] is None or r["peer"] == "train step", r
    sampling = next(r for r in records if r["case"].startswith("sample_dpmpp"))
    assert sampling["ours_s_per_image"] > 0 and "ours_overhead_pct_of_step" in sampling
    utilisation = next(r for r in records if r["case"] == "utilisation")
    assert utilisation["ours_flops_per_step"] > 0 and utilisation["matmul_gflops"] > 0
