"""latent_explore.py, evaluate.py and sample.py end to end on autoencoder and VAE runs a test trains in seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from runner import script, train

SMALL_NET = "model.net.channels=[8,16]"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "vae": train(root / "vae", "experiment=vae_mnist5k", "model.ll_samples=4", SMALL_NET),
        "ae2d": train(root / "ae2d", "experiment=ae2d_mnist5k", SMALL_NET),
        "dae": train(root / "dae", "experiment=dae_mnist5k", SMALL_NET),
        "classifier": train(root / "clf", "experiment=classifier_cnn_digits"),
    }


def test_latent_explore_writes_every_picture_and_a_summary(runs: dict[str, Path], tmp_path: Path) -> None:
    result = script("latent_explore.py", "--ckpt", str(runs["vae"]), "--outdir", str(tmp_path / "vae"),
                    "--attribute", "label=1", "label=7", "--pairs", "2", "--steps", "4", "--n_samples", "9")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "vae" / "summary.json").read_text())
    assert summary["projection"] == "pca" and summary["prior"] == "N(0, I)" and summary["latent_shape"] == [32]
    assert [a["attribute"] for a in summary["attributes"]] == ["label=1", "label=7"]
    for name in summary["files"]:
        assert (tmp_path / "vae" / name).stat().st_size > 0
    # a 2-D autoencoder: the scatter is the code itself, the prior a Gaussian fitted to the test codes
    result = script("latent_explore.py", "--ckpt", str(runs["ae2d"]))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((runs["ae2d"] / "latent_explore" / "summary.json").read_text())
    assert summary["projection"] == "identity" and summary["prior"].startswith("Gaussian fitted")


def test_latent_explore_rejects_bad_attributes_and_non_autoencoders(runs: dict[str, Path], tmp_path: Path) -> None:
    bad = script("latent_explore.py", "--ckpt", str(runs["vae"]), "--attribute", "color=red",
                 "--outdir", str(tmp_path))
    assert bad.returncode != 0 and "KEY one of ['label']" in bad.stderr
    classifier = script("latent_explore.py", "--ckpt", str(runs["classifier"]), "--outdir", str(tmp_path))
    assert classifier.returncode == 2 and "ImageClassifier" in classifier.stderr


def test_evaluate_reports_reconstruction_likelihood_and_denoising(runs: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    out = tmp_path / "vae.json"
    result = script("evaluate.py", "--ckpt", str(runs["vae"]), "--k", "4", "--classifier", str(runs["classifier"]),
                    "--n_samples", "20", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    clean, prior = json.loads(out.read_text())["rows"]
    assert clean["input"] == "clean" and 0 < clean["ssim"] <= 1 and clean["psnr"] > 0
    assert clean["nll_is"] > 0 and clean["bpd"] > 0 and clean["kl"] >= 0
    assert 0 <= clean["rec_acc"] == clean["rec_acc/label"] <= 1  # the classifier judges the reconstructions
    assert prior["input"] == "prior samples" and prior["fid"] >= 0
    dae = script("evaluate.py", "--ckpt", str(runs["dae"]), "--out", str(tmp_path / "dae.json"))
    assert dae.returncode == 0, dae.stderr[-2000:]
    clean, corrupted = json.loads((tmp_path / "dae.json").read_text())["rows"]
    assert corrupted["input"] == "corrupted" and "input_psnr" not in clean
    assert corrupted["input_psnr"] == pytest.approx(10 * math.log10(2**2 / 0.5**2), abs=1.0)  # N(0, 0.5^2) noise
    assert "| input |" in (tmp_path / "dae.md").read_text()


def test_sample_script_draws_from_a_vae_prior(runs: dict[str, Path], tmp_path: Path) -> None:
    result = script("sample.py", "--ckpt", str(runs["vae"]), "--n_samples", "5", "--outdir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "samples").glob("*.png"))) == 5
    assert "sampler" not in json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[0])
    guided = script("sample.py", "--ckpt", str(runs["vae"]), "--scale", "3", "--outdir", str(tmp_path))
    assert guided.returncode != 0 and "diffusion runs" in guided.stderr
