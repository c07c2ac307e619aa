"""sample.py and evaluate.py end to end on a class-conditional GAN run a test trains in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runner import script, train

SMALL_NETS = ["model.generator.base_channels=8", "model.discriminator.base_channels=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"cgan": train(root / "cgan", "experiment=cgan_mnist5k", *SMALL_NETS),
            "classifier": train(root / "clf", "experiment=classifier_cnn_digits")}


def test_sample_script_draws_a_row_per_class_or_one_class(runs: dict[str, Path], tmp_path: Path) -> None:
    result = script("sample.py", "--ckpt", str(runs["cgan"]), "--n_samples", "2", "--outdir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "samples").glob("*.png"))) == 20  # ten classes, two each
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records[:4]] == [0, 0, 1, 1] and (tmp_path / "grid-0000.png").is_file()
    assert records[0]["use_ema"] is True and "sampler" not in records[0] and records[0]["file"] == "samples/00000.png"
    one = script("sample.py", "--ckpt", str(runs["cgan"]), "--class_label", "3", "--n_samples", "4",
                 "--no-ema", "--outdir", str(tmp_path))
    assert one.returncode == 0 and len(list((tmp_path / "samples").glob("*.png"))) == 24
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert records[20]["use_ema"] is False and records[20]["file"] == "samples/00020.png"
    assert {r["label"] for r in records[20:]} == {3} and (tmp_path / "grid-0001.png").is_file()
    bad = script("sample.py", "--ckpt", str(runs["cgan"]), "--class_label", "10", "--outdir", str(tmp_path))
    assert bad.returncode != 0 and "0..9" in bad.stderr


def test_evaluate_reports_fid_and_conditional_accuracy(runs: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    out = tmp_path / "cgan.json"
    result = script("evaluate.py", "--ckpt", str(runs["cgan"]), "--classifier", str(runs["classifier"]),
                    "--n_samples", "40", "--batch_size", "16", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["fid"] >= 0 and 0 <= row["cond_acc"] <= 1 and row["sec_per_image"] > 0 and "sampler" not in row
