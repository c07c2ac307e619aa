"""cache_latents.py: a first stage encodes a dataset once into latent shards (and the mirrored images' with
--flip); the stream serves them as ``latent`` beside the image, and a latent-diffusion recipe trains from them."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch
from ldm_runs import FAST, FIRST_STAGE, LDM, train_shapes
from runner import script

from pixelforge.cli import compose_config, parse
from pixelforge.data.shards import ShardStream
from pixelforge.runs import load_run
from pixelforge.train import run

pytest.importorskip("webdataset")
DATA = ["data=shapes", "data.image_size=16", "data.dataset.num_samples={train:64,val:16,test:16}"]


def test_latent_shards_hold_the_first_stages_latents_and_train_a_latent_diffusion_model(tmp_path: Path) -> None:
    first_stage = train_shapes(tmp_path / "first_stage", *FIRST_STAGE)
    result = script("cache_latents.py", "--first_stage", str(first_stage), "--out", str(tmp_path / "latents"),
                    "--flip", "--maxcount", "32", "--batch_size", "16", *DATA)
    assert result.returncode == 0, result.stderr
    printed = shlex.split(result.stdout.splitlines()[-1])
    urls = {w.split("=", 1)[0].rsplit(".", 1)[1]: w.split("=", 1)[1].strip("'") for w in printed if ".urls." in w}
    _, autoencoder = load_run(first_stage)

    val = list(ShardStream(urls, "val"))
    images = torch.stack([item["image"] for item in val])
    with torch.no_grad():
        expected = autoencoder.encode_latent(images, sample=False)
        mirrored = autoencoder.encode_latent(images.flip(-1), sample=False)
    torch.testing.assert_close(torch.stack([item["latent"] for item in val]), expected, atol=1e-5, rtol=1e-4)

    train = ShardStream(urls, "train", shuffle_buffer=1)  # the flip is drawn per sample: both latents appear
    train_images = torch.stack([item["image"] for item in train])
    latents = torch.stack([item["latent"] for item in train])
    with torch.no_grad():
        plain = autoencoder.encode_latent(train_images, sample=False)
        flipped = autoencoder.encode_latent(train_images.flip(-1), sample=False)
    is_plain = ((latents - plain).flatten(1).abs().amax(1) < 1e-4)
    is_flipped = ((latents - flipped).flatten(1).abs().amax(1) < 1e-4)
    assert bool((is_plain | is_flipped).all()) and 0 < int(is_flipped.sum()) < len(latents)
    assert not torch.allclose(expected, mirrored)

    ldm = ["-t", "--no-test", "-l", str(tmp_path / "ldm"), *LDM, *FAST, f"model.first_stage.run={first_stage}",
           *printed, "~data.dataset.num_samples", "data.batch_size=16", "callbacks.latent_cache=null"]
    run(compose_config(*parse(ldm)))
    (run_dir,) = (tmp_path / "ldm").iterdir()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
