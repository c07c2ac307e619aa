"""txt2img.py and img2img.py end to end on a text-to-image latent diffusion run a test trains in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ldm_runs import FAST as TRAIN_FAST
from ldm_runs import train_tiny_ldm
from omegaconf import OmegaConf
from PIL import Image, ImageDraw
from runner import script

from pixelforge.cli import compose_config, parse
from pixelforge.inference import load_image
from pixelforge.runs import load_run
from pixelforge.train import run

FAST = ("--ddim_steps", "2", "--n_samples", "2")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    ldm = train_tiny_ldm(tmp_path_factory.mktemp("runs"))
    return {"ldm": ldm, "first_stage": Path(OmegaConf.load(ldm / "configs" / "config.yaml").model.first_stage.run)}


@pytest.fixture(scope="module")
def init_image(tmp_path_factory) -> Path:
    """A 24x20 red disc on black: not the model's size, so the scripts must resize it."""
    path = tmp_path_factory.mktemp("images") / "init.png"
    image = Image.new("RGB", (24, 20))
    ImageDraw.Draw(image).ellipse((4, 3, 19, 16), fill=(230, 20, 20))
    image.save(path)
    return path


def pixels(path: Path) -> np.ndarray:
    """An image file as an int array (H, W, 3)."""
    return np.asarray(Image.open(path), dtype=np.int16)


def records(outdir: Path) -> list[dict]:
    """The JSON records of ``outdir/samples.jsonl``, one per image."""
    return [json.loads(line) for line in (outdir / "samples.jsonl").read_text().splitlines()]


def test_txt2img_numbers_outputs_on_and_records_every_image(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = script("txt2img.py", "--ckpt", str(runs["ldm"]), "--outdir", str(out), "--seed", "7", *FAST,
                   "--prompt", "a small blue square in the top left")
    assert first.returncode == 0, first.stderr[-2000:]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle in the center\n\na small green triangle at the bottom\nred\n")
    second = script("txt2img.py", "--ckpt", str(runs["ldm"]), "--outdir", str(out), "--seed", "8", *FAST,
                    "--from-file", str(prompts), "--n_iter", "1", "--sampler", "ddim", "--ddim_eta", "0.5",
                    "--guidance_rescale", "0.3")
    assert second.returncode == 0, second.stderr[-2000:]
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"{i:05d}.png" for i in range(7)]
    assert pixels(out / "samples" / "00006.png").shape == (16, 16, 3)
    assert pixels(out / "grid-0000.png").shape == (2 + 2 * 18, 2 + 2 * 18, 3)  # 2 iterations x 2 samples
    assert (out / "grid-0001.png").is_file()
    rows = records(out)
    assert [r["file"] for r in rows] == [f"samples/{i:05d}.png" for i in range(7)]
    first_run = [(r["seed"], r["grid"], r["sampler"], r["eta"]) for r in rows[:4]]
    assert first_run == [(7, "grid-0000.png", "dpmpp", None)] * 4
    assert {r["prompt"] for r in rows[:4]} == {"a small blue square in the top left"}
    assert [r["prompt"] for r in rows[4:]] == ["a large red circle in the center",
                                               "a small green triangle at the bottom", "red"]
    assert all(r["seed"] == 8 and r["eta"] == 0.5 and r["grid"] == "grid-0001.png" for r in rows[4:])
    recipe = load_run(runs["ldm"])[1].log_guidance_rescale
    assert [r["guidance_rescale"] for r in rows] == [recipe] * 4 + [0.3] * 3  # the recipe's, then the flag's
    assert {(r["steps"], r["scale"], r["H"], r["W"]) for r in rows} == {(2, 2.0, 16, 16)}  # the recipe's scale
    lines = (out / "prompts.txt").read_text().splitlines()
    assert lines[0] == "samples/00000.png\ta small blue square in the top left"
    assert lines[-1] == "samples/00006.png\tred"


def test_fixed_code_repeats_the_images_of_a_prompt(runs: dict[str, Path], tmp_path: Path) -> None:
    result = script("txt2img.py", "--ckpt", str(runs["ldm"]), "--outdir", str(tmp_path), *FAST, "--fixed_code",
                    "--skip_grid")
    assert result.returncode == 0, result.stderr[-2000:]
    first, second, third, fourth = (pixels(tmp_path / "samples" / f"{i:05d}.png") for i in range(4))
    assert np.array_equal(first, third) and np.array_equal(second, fourth)  # iteration 2 starts from the same noise
    assert not np.array_equal(first, second)
    assert not list(tmp_path.glob("grid-*.png"))


def test_autocast_and_skip_save(runs: dict[str, Path], tmp_path: Path) -> None:
    result = script("txt2img.py", "--ckpt", str(runs["ldm"]), "--outdir", str(tmp_path), *FAST, "--n_iter", "1",
                    "--precision", "autocast", "--skip_save", "--plms")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not list((tmp_path / "samples").iterdir())
    assert [(r["file"], r["sampler"]) for r in records(tmp_path)] == [(None, "plms")] * 2
    assert pixels(tmp_path / "grid-0000.png").shape == (20, 38, 3)


@pytest.mark.parametrize(("args", "message"), [
    (["--H", "18"], "H=18 and W=16 must be multiples of 4"),
    (["--from-file", "EMPTY"], "holds no prompts"),
    (["--C", "3"], "--C 3 does not match the model, whose value is 4"),
    (["--ddim_eta", "0.5"], "applies to the DDIM sampler only"),
    (["--guidance_rescale", "1.5"], "--guidance_rescale: must lie in [0, 1] (0: plain guidance, 0.7: Lin et al.), "
                                    "got 1.5"),
    (["--ddim_steps", "2000"], "steps=2000 must be between 1 and the schedule's num_timesteps=1000"),
])
def test_txt2img_rejects_bad_settings(runs: dict[str, Path], tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty.txt").write_text("\n  \n")
    args = [str(tmp_path / "empty.txt") if a == "EMPTY" else a for a in args]
    result = script("txt2img.py", "--ckpt", str(runs["ldm"]), "--outdir", str(tmp_path), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]


def test_txt2img_rejects_missing_and_unconditioned_checkpoints(runs: dict[str, Path], tmp_path: Path) -> None:
    missing = script("txt2img.py", "--ckpt", str(tmp_path / "nope"), "--outdir", str(tmp_path))
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr
    autoencoder = script("txt2img.py", "--ckpt", str(runs["first_stage"]), "--outdir", str(tmp_path))
    assert autoencoder.returncode == 2 and "AutoencoderKL, not a text-conditioned model" in autoencoder.stderr


def reconstruction_error(runs: dict[str, Path], image: Path, samples: list[Path]) -> list[float]:
    """Mean absolute difference of each sample from the first stage's reconstruction of ``image`` (in [-1, 1])."""
    _, model = load_run(runs["ldm"])
    height, width = pixels(samples[0]).shape[:2]
    reference = model.decode(model.encode(load_image(str(image), height, width, "RGB") * 2 - 1))[0]
    return [(torch.from_numpy(pixels(s)).permute(2, 0, 1) / 127.5 - 1 - reference).abs().mean().item()
            for s in samples]


def test_img2img_resizes_and_keeps_more_of_the_image_at_low_strength(runs: dict[str, Path], tmp_path: Path,
                                                                      init_image: Path) -> None:
    common = ["--ckpt", str(runs["ldm"]), "--init-img", str(init_image), "--H", "16", "--W", "24", "--n_iter", "1",
              "--n_samples", "1", "--ddim_steps", "50", "--scale", "1", "--outdir", str(tmp_path)]
    for strength in ("0.02", "1"):
        result = script("img2img.py", *common, "--strength", strength)
        assert result.returncode == 0, result.stderr[-2000:]
    low, full = sorted((tmp_path / "samples").iterdir())
    assert pixels(low).shape == (16, 24, 3)
    kept, replaced = reconstruction_error(runs, init_image, [low, full])
    assert kept < 0.8 * replaced  # the 3-step first stage decodes most latents alike: a margin, not a gulf
    rows = records(tmp_path)
    assert [(r["strength"], r["init_img"], r["mask"], r["H"], r["W"]) for r in rows] == [
        (0.02, str(init_image), None, 16, 24), (1.0, str(init_image), None, 16, 24)]


@pytest.mark.parametrize("precision", ["full", "autocast"])
def test_inpainting_with_a_black_mask_keeps_the_init_image(runs: dict[str, Path], tmp_path: Path,
                                                           init_image: Path, precision: str) -> None:
    mask = tmp_path / "keep_all.png"
    Image.new("L", (8, 8)).save(mask)
    result = script("img2img.py", "--ckpt", str(runs["ldm"]), "--init-img", str(init_image), "--mask", str(mask),
                    "--strength", "1", "--outdir", str(tmp_path / "out"), *FAST, "--n_iter", "1",
                    "--precision", precision)
    assert result.returncode == 0, result.stderr[-2000:]
    samples = sorted((tmp_path / "out" / "samples").iterdir())
    assert max(reconstruction_error(runs, init_image, samples)) < 0.01  # PNG rounding only
    assert records(tmp_path / "out")[0]["mask"] == str(mask)


def test_img2img_rejects_bad_strength_and_unreadable_images(runs: dict[str, Path], tmp_path: Path,
                                                            init_image: Path) -> None:
    for strength in ("0", "1.5"):
        bad = script("img2img.py", "--ckpt", str(runs["ldm"]), "--init-img", str(init_image), "--strength", strength)
        assert bad.returncode == 2 and f"--strength {float(strength)} must be in (0, 1]" in bad.stderr
    (tmp_path / "broken.png").write_text("not an image")
    unreadable = script("img2img.py", "--ckpt", str(runs["ldm"]), "--init-img", str(tmp_path / "broken.png"),
                        "--outdir", str(tmp_path))
    assert unreadable.returncode == 2 and "cannot read image" in unreadable.stderr


def test_evaluate_judges_prompts_per_attribute(runs: dict[str, Path], tmp_path: Path) -> None:
    run(compose_config(*parse(["-t", "--no-test", "-l", str(tmp_path / "judge"), "experiment=classifier_cnn_shapes",
                               "data.image_size=16", "data.dataset.num_samples=16", *TRAIN_FAST])))
    (judge,) = (tmp_path / "judge").iterdir()
    out = tmp_path / "eval.json"
    result = script("evaluate.py", "--ckpt", str(runs["ldm"]), "--classifier", str(judge), "--split", "heldout",
                    "--sampler", "dpmpp:2", "--scale", "1", "3", "--guidance_rescale", "0", "0.7", "--n_samples", "6",
                    "--batch_size", "6", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(row["scale"], row["guidance_rescale"]) for row in rows] == [(1.0, 0.0), (1.0, 0.7), (3.0, 0.0), (3.0, 0.7)]
    assert rows[0]["cond_acc"] == rows[1]["cond_acc"], "at scale 1 nothing is guided, so nothing is rescaled"
    for row in rows:
        assert {f"cond_acc/{key}" for key in ("shape", "color", "size", "position")} <= set(row)
        assert 0 <= row["cond_acc"] <= min(row[f"cond_acc/{key}"] for key in ("shape", "color", "size", "position"))
        assert 0 <= row["shape_fit"] <= 1 and 0 <= row["shape_iou"] <= 1
        tag = f"dpmpp2_scale{row['scale']:g}" + ("_rescale0.7" if row["guidance_rescale"] else "")
        assert (tmp_path / f"eval_worst_{tag}.png").stat().st_size > 0
        assert (tmp_path / f"eval_misread_{tag}.png").exists() == (row["cond_acc"] < 1)  # the judge is untrained


def test_the_python_api_draws_what_the_script_draws(runs: dict[str, Path], tmp_path: Path) -> None:
    from pixelforge.inference import InferenceError, load_text_model, text_to_image
    from pixelforge.utils.images import to_uint8

    prompt = "a large green triangle in the center"
    assert script("txt2img.py", "--ckpt", str(runs["ldm"]), "--outdir", str(tmp_path), "--seed", "3", *FAST,
                  "--n_iter", "1", "--skip_grid", "--prompt", prompt).returncode == 0
    model = load_text_model(runs["ldm"], device="cpu")
    images = text_to_image(model, [prompt] * 2, steps=2, generator=torch.Generator().manual_seed(3))
    assert images.shape == (2, 3, model.image_size, model.image_size)
    for i, image in enumerate(to_uint8(images)):  # equal up to a float rounding at a uint8 boundary (2 threads)
        drawn = pixels(tmp_path / "samples" / f"{i:05d}.png").astype(np.int16)  # uint8 differences would wrap
        assert np.abs(image.permute(1, 2, 0).numpy().astype(np.int16) - drawn).max() <= 1
    with pytest.raises(InferenceError, match="DDIM sampler only"):  # an API raises; only scripts exit
        text_to_image(model, [prompt], eta=0.5)
    with pytest.raises(InferenceError, match="not a text-conditioned model"):
        load_text_model(runs["first_stage"])
