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
    record = json.loads((tmp_path / "samples-00000.json").read_text())
    assert record["labels"][:4] == [0, 0, 1, 1] and record["use_ema"] is True and "sampler" not in record
    one = script("sample.py", "--ckpt", str(runs["cgan"]), "--class_label", "3", "--n_samples", "4",
                 "--no-ema", "--outdir", str(tmp_path))
    assert one.returncode == 0 and len(list((tmp_path / "samples").glob("*.png"))) == 24
    assert json.loads((tmp_path / "samples-00020.json").read_text())["use_ema"] is False
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
