"""LatentCache: the training split encoded once gives the same latents, losses and weights as encoding every
step, and configs whose latents change from step to step are refused by name."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from test_latent_diffusion import tiny_ldm

from pixelforge.callbacks.latent_cache import LatentCache, encode_split
from pixelforge.data import ImageDataModule
from pixelforge.data.shapes import ShapesDataset
from pixelforge.data.shards import ShardStream, shard_sample, write_shards
from pixelforge.modules.first_stage import IdentityFirstStage


def shapes(**transform) -> ImageDataModule:
    """16 px shapes, 24 training items, batch 8."""
    def dataset(split, transform):
        return ShapesDataset(split, transform, image_size=16, num_samples=24)
    return ImageDataModule(dataset, batch_size=8, image_size=16, transform={"resize": False, **transform})


class BatchKeys(L.Callback):
    """The keys of every training batch, as the training step receives it."""

    def __init__(self) -> None:
        self.keys: list[set[str]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict,
                             batch_idx: int) -> None:
        self.keys.append(set(batch))


def fit(model: L.LightningModule, datamodule: ImageDataModule, tmp_path: Path, cache: bool,
        *callbacks: L.Callback) -> L.LightningModule:
    torch.manual_seed(0)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=([LatentCache(batch_size=5)] if cache else []) + list(callbacks),
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    return model


def test_cached_latents_train_the_same_weights_as_encoding_every_step(tmp_path: Path) -> None:
    model = tiny_ldm(sample_posterior=False)
    cached = fit(copy.deepcopy(model), shapes(), tmp_path, cache=True)
    encoded = fit(copy.deepcopy(model), shapes(), tmp_path, cache=False)
    for (name, a), b in zip(cached.unet.state_dict().items(), encoded.unet.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert not torch.equal(cached.unet.state_dict()["out.2.weight"], model.unet.state_dict()["out.2.weight"])


def test_training_batches_carry_the_cached_latents(tmp_path: Path) -> None:
    """An epoch-counted run builds its training loader when configure_optimizers asks for the stepping batches (the
    lr schedule), before fit starts: the cache must be attached by then, or every step encodes its images again."""
    keys = BatchKeys()
    fit(tiny_ldm(sample_posterior=False), shapes(), tmp_path, True, keys)
    assert len(keys.keys) == 3
    assert all("latent" in batch for batch in keys.keys)


def test_items_carry_their_images_latents(tmp_path: Path) -> None:
    model, datamodule = tiny_ldm(sample_posterior=False), shapes()
    fit(model, datamodule, tmp_path, cache=True)
    train = datamodule.build("train")
    images = torch.stack([train[i]["image"] for i in (0, 7, 23)])
    latents = torch.stack([train[i]["latent"] for i in (0, 7, 23)])
    torch.testing.assert_close(latents, model.first_stage.encode_latent(images))
    assert "latent" not in datamodule.build("val")[0]


class Patches(torch.nn.Module):
    """A first stage without parameters: 2x2 pixel patches folded into channels."""

    def encode_latent(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        return torch.nn.functional.pixel_unshuffle(x, 2)


def test_a_first_stage_without_parameters_is_encoded() -> None:
    dataset = ShapesDataset("train", None, image_size=16, num_samples=6)
    latents = encode_split(Patches(), dataset, 4, torch.device("cpu"), progress=False)
    assert latents.shape == (6, 12, 8, 8)
    torch.testing.assert_close(latents[5], torch.nn.functional.pixel_unshuffle(dataset[5]["image"], 2))


@pytest.mark.parametrize(("transform", "named"), [({"flip": True}, "data.transform.flip=True"),
                                                  ({"translate": 0.1}, "data.transform.translate=0.1")])
def test_random_training_transforms_are_refused(tmp_path: Path, transform: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        fit(tiny_ldm(sample_posterior=False), shapes(**transform), tmp_path, cache=True)


def test_posterior_sampling_and_pixel_diffusion_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model\.sample_posterior=true"):
        fit(tiny_ldm(sample_posterior=True), shapes(), tmp_path, cache=True)
    pixels = tiny_ldm(first_stage=IdentityFirstStage(3))
    with pytest.raises(ValueError, match="pixel diffusion"):
        fit(pixels, shapes(), tmp_path, cache=True)


def test_a_streamed_training_split_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("webdataset")
    for split in ("train", "val"):
        dataset = ShapesDataset(split, image_size=16, num_samples=24)
        write_shards((shard_sample(i, dataset[i]) for i in range(len(dataset))), str(tmp_path / f"{split}-%06d.tar"))
    urls = {split: str(tmp_path / f"{split}-000000.tar") for split in ("train", "val")}
    datamodule = ImageDataModule(lambda split, transform: ShardStream(urls, split, transform), batch_size=8,
                                 image_size=16, transform={"resize": False})
    with pytest.raises(ValueError, match="a streamed training split"):
        fit(tiny_ldm(sample_posterior=False), datamodule, tmp_path, cache=True)
