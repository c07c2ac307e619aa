"""The sampling and evaluation scripts on a tiny class-conditional DDPM run: PNGs, grids and records, clear errors,
FID and accuracy per sampler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runner import script

from pixelforge.cli import compose_config, parse
from pixelforge.train import run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("ddpm")
    overrides = ["-t", "--no-test", "-l", str(logdir), "experiment=ddpm_mnist5k_cond", "data=digits",
                 "data.image_size=8", "model.unet.channel_mult=[1,2]", "model.unet.model_channels=16",
                 "model.unet.attention_resolutions=[2]", "trainer.max_steps=2", "trainer.limit_val_batches=1",
                 "trainer.num_sanity_val_steps=0", "model.log_sampler.steps=2", "callbacks.progress_bar=null",
                 "trainer.accelerator=cpu", "trainer.devices=1"]
    run(compose_config(*parse(overrides)))
    (run_dir,) = logdir.iterdir()
    return run_dir


def test_sample_script_writes_pngs_grid_and_record(trained_run: Path, tmp_path: Path) -> None:
    args = ["--ckpt", str(trained_run), "--n_samples", "2", "--steps", "3", "--sampler", "ddim", "--scale", "2",
            "--outdir", str(tmp_path), "--batch_size", "8"]
    result = script("sample.py", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "samples").glob("*.png"))) == 20  # all ten classes, two each
    assert (tmp_path / "grid-0000.png").is_file()
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert records[0]["sampler"] == "ddim" and [r["label"] for r in records[:3]] == [0, 0, 1]
    assert records[0]["guidance_rescale"] == 0.0
    one = script("sample.py", *args, "--class_label", "7", "--n_samples", "3")
    assert one.returncode == 0 and len(list((tmp_path / "samples").glob("*.png"))) == 23
    default = script("sample.py", "--ckpt", str(trained_run), "--class_label", "7", "--n_samples", "1", "--steps",
                     "2", "--outdir", str(tmp_path))
    assert default.returncode == 0, default.stderr[-2000:]
    last = json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[-1])
    assert (last["scale"], last["guidance_rescale"]) == (3.0, 0.0)  # the run's log_guidance_scale and rescale


def test_sample_script_errors_are_clear(trained_run: Path, tmp_path: Path) -> None:
    missing = script("sample.py", "--ckpt", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no checkpoint" in missing.stderr
    bad = script("sample.py", "--ckpt", str(trained_run), "--class_label", "12", "--outdir", str(tmp_path))
    assert bad.returncode != 0 and "0..9" in bad.stderr
    rescale = script("sample.py", "--ckpt", str(trained_run), "--guidance_rescale", "-0.1", "--outdir", str(tmp_path))
    assert rescale.returncode == 2 and "--guidance_rescale: must lie in [0, 1]" in rescale.stderr


def test_evaluate_script_reports_fid_and_accuracy_per_sampler(trained_run: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = ["-t", "--no-test", "-l", str(tmp_path / "clf"), "experiment=classifier_cnn_digits",
                 "data.image_size=8", "trainer.max_steps=2", "trainer.limit_val_batches=1",
                 "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null", "trainer.accelerator=cpu",
                 "trainer.devices=1"]
    run(compose_config(*parse(overrides)))
    (classifier,) = (tmp_path / "clf").iterdir()
    out = tmp_path / "eval.json"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    result = script("evaluate.py", "--ckpt", str(trained_run), "--classifier", str(classifier), "--sampler", "ddim:2",
                    "dpmpp:3", "--n_samples", "30", "--batch_size", "16", "--scale", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddim", 2), ("dpmpp", 3)]
    assert all(r["fid"] >= 0 and 0 <= r["cond_acc"] <= 1 and r["sec_per_image"] > 0 for r in rows)
    assert out.with_suffix(".md").read_text().startswith("| sampler | steps |")
    live = script("evaluate.py", "--ckpt", str(trained_run), "--classifier", str(classifier), "--sampler", "ddim:2",
                  "--n_samples", "30", "--batch_size", "16", "--scale", "2", "--no-ema", "--out", str(out))
    assert live.returncode == 0, live.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert rows[0]["ema"] and not row["ema"] and row["fid"] != rows[0]["fid"]  # the same noise, the live weights
    default = script("evaluate.py", "--ckpt", str(trained_run), "--classifier", str(classifier), "--sampler", "ddim:2",
                     "--n_samples", "30", "--batch_size", "16", "--out", str(out))
    assert default.returncode == 0, default.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["scale"] == 3.0  # the run's log_guidance_scale, the scale its image logs (and txt2img.py) sample at
    clf = script("evaluate.py", "--ckpt", str(classifier))
    assert clf.returncode == 0 and "| label |" in clf.stdout
