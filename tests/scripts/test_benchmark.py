"""Smoke test of scripts/benchmark.py: --quick without peers runs every case and writes well-formed records, and the
text case times the model a training run builds from the recipe."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from runner import script

from pixelforge.cli import compose_config, parse
from pixelforge.runs import FINISHED, model_config
from pixelforge.stages import prerequisites
from pixelforge.train import build_model

KEYS = {"case", "precision", "ours_ms", "peer", "peer_ms", "ratio", "ours_params", "peer_params", "ours_spread_ms",
        "ours_peak_mb"}
RECIPE = "ldm_shapes_clip"  # the default recipe: a first stage and a CLIP are trained before it


def untrained_run(experiment: str, run_dir: Path) -> Path:
    """A finished run directory of ``experiment`` with untrained weights: what ``main.py -t`` would reuse, without
    training."""
    cfg = compose_config(*parse([f"experiment={experiment}"]))
    model = instantiate(model_config(cfg.model), _convert_="all")
    for folder in ("configs", "checkpoints"):
        (run_dir / folder).mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / "configs" / "config.yaml", resolve=True)
    torch.save({"state_dict": model.state_dict()}, run_dir / "checkpoints" / "last.ckpt")
    (run_dir / FINISHED).write_text("global_step 0\n")
    return run_dir


def untrained_stages(logdir: Path) -> list[str]:
    """Untrained finished runs of the first stage and CLIP the recipe names, under ``logdir``; overrides naming them."""
    stages = prerequisites(compose_config(*parse([f"experiment={RECIPE}"])))
    return [f"{path}.run={untrained_run(node.experiment, logdir / f'2026-01-01T00-00-00_{node.experiment}')}"
            for path, node in stages.items()]


def training_unet(tmp_path: Path, *overrides: str) -> torch.nn.Module:
    """The U-Net of the recipe's model as ``train.run`` builds it, on runs of the first stage and CLIP it names."""
    cfg = compose_config(*parse([f"experiment={RECIPE}", *untrained_stages(tmp_path / "stages"), *overrides]))
    return build_model(cfg, L.Trainer(accelerator="cpu", devices=1, logger=False)).unet


def test_quick_benchmark_without_peers(tmp_path: Path) -> None:
    out, logs = tmp_path / "bench.json", tmp_path / "logs"
    untrained_stages(logs)  # the quality case trains on them
    result = script("benchmark.py", "--quick", "--no-peers", "--device", "cpu", "--cases", "all", "--out", str(out),
                    "-l", str(logs), "--precision", "fp32")  # bf16 is autocast around the same calls
    assert result.returncode == 0, result.stderr
    assert "measuring pixelforge alone" in result.stdout
    records = json.loads(out.read_text())
    cases = {r["case"] for r in records}
    assert {"text_train", "text_forward", "uncond_train", "utilisation", f"data_{RECIPE}", "sd_train",
            "sd_forward", "latents_train"} <= cases
    assert any(case.startswith("sample_dpmpp") for case in cases) and any(c.startswith("sample_ddim") for c in cases)
    assert {r["precision"] for r in records} == {"fp32"}
    for r in records:
        assert r.keys() >= KEYS, r["case"]
        assert r["ours_ms"] > 0, r
        assert r["peer_ms"] is None or r["peer"] in ("train step", "encoder"), r
    sampling = next(r for r in records if r["case"].startswith("sample_dpmpp"))
    assert sampling["ours_s_per_image"] > 0 and "ours_overhead_pct_of_step" in sampling
    quality = next(r for r in records if r["case"] == "time_to_quality")
    assert [p["step"] for p in quality["points"]] == [1, 2] and Path(quality["curve"]).is_file()
    assert 0 <= quality["final_shape_fit"] <= 1 and quality["ours_ms"] > 0
    latents = {r["model"]: r for r in records if r["case"] == "latents_train"}
    assert latents.keys() == {RECIPE, "sd v1 toy"} and all(r["peer_ms"] > 0 for r in latents.values())
    utilisation = next(r for r in records if r["case"] == "utilisation")
    assert utilisation["ours_flops_per_step"] > 0 and utilisation["matmul_gflops"] > 0

    # the text case's model is the recipe's: coordinate maps as 2 extra inputs, the U-Net a training run builds
    text = next(r for r in records if r["case"] == "text_train")
    unet = training_unet(tmp_path)
    assert text["model"] == RECIPE and text["in_channels"] == unet.config["in_channels"] == 6
    assert text["ours_params"] == sum(p.numel() for p in unet.parameters())


def test_bf16_steps_run_under_autocast(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = script("benchmark.py", "--quick", "--no-peers", "--device", "cpu", "--cases", "uncond", "--precision",
                    "bf16", "--out", str(out))
    assert result.returncode == 0, result.stderr
    (uncond,) = json.loads(out.read_text())
    assert uncond["case"] == "uncond_train" and uncond["precision"] == "bf16" and uncond["ours_ms"] > 0


def test_overrides_change_the_timed_recipe(tmp_path: Path) -> None:
    out, narrow = tmp_path / "bench.json", ("model.unet.model_channels=32", "model.unet.num_groups=8")
    result = script("benchmark.py", "--quick", "--no-peers", "--device", "cpu", "--cases", "text", "--precision",
                    "fp32", "--out", str(out), *narrow)
    assert result.returncode == 0, result.stderr
    text = next(r for r in json.loads(out.read_text()) if r["case"] == "text_train")
    unet = training_unet(tmp_path, *narrow)
    assert text["ours_params"] == sum(p.numel() for p in unet.parameters()) < sum(
        p.numel() for p in training_unet(tmp_path / "default").parameters())


def test_malformed_and_unknown_overrides_are_refused() -> None:
    result = script("benchmark.py", "--cases", "text", "model.unet.model_channels")
    assert result.returncode == 2 and "KEY=VALUE" in result.stderr and "model.unet.model_channels" in result.stderr
    result = script("benchmark.py", "--quick", "--no-peers", "--device", "cpu", "--cases", "text", "model.no_such=1")
    assert result.returncode == 2 and "no_such" in result.stderr, result.stderr


def test_unknown_experiment_is_refused() -> None:
    result = script("benchmark.py", "--experiment", "no_such_recipe")
    assert result.returncode == 2
    assert "no_such_recipe" in result.stderr and RECIPE in result.stderr
