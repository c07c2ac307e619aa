"""Latent diffusion: cross-attention uses the prompt, scale_by_std, frozen first stage, every kind of condition,
img2img and inpainting through the sampler, U-Net sizes derived from the model."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from pixelforge.conditioning import Conditioner, Embedder, Labels, SpatialMap, masked_mean
from pixelforge.diffusion.schedule import NoiseSchedule
from pixelforge.models.diffusion import DiffusionModel, ImageInit
from pixelforge.modules.embeddings import coordinates
from pixelforge.modules.encoders import ClassEmbedder, TransformerTextEncoder, WordTokenizer
from pixelforge.modules.unet import UNetModel

FIRST_STAGE = {
    "_target_": "pixelforge.models.autoencoder_kl.AutoencoderKL",
    "embed_dim": 2,
    "image_size": 16,
    "ddconfig": {"in_channels": 3, "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 2,
                 "num_groups": 4},
    "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
}
WORDS = ["a", "red", "blue", "circle", "square"]


def text(dim: int = 16, ucg_rate: float = 0.1) -> Embedder:
    return Embedder(TransformerTextEncoder(WordTokenizer(WORDS, max_length=6), dim=dim, depth=1, heads=2), "caption",
                    ucg_rate)


CONDITIONERS = {
    "text": lambda: Conditioner(caption=text()),
    "labels": lambda: Conditioner(label=Embedder(Labels(3), "label", 0.1)),
    "class token": lambda: Conditioner(label=Embedder(ClassEmbedder(3, 16), "label", 0.1)),
    "concat": lambda: Conditioner(mask=Embedder(SpatialMap(1), "mask")),
    "text + concat": lambda: Conditioner(caption=text(), mask=Embedder(SpatialMap(1), "mask")),
    "none": lambda: Conditioner(),
}


def tiny_ldm(conditioner: Conditioner | None = None, first_stage: dict | None = None, unet_keywords: dict | None = None,
             **kwargs) -> DiffusionModel:
    """A tiny LDM whose U-Net is a partial, as the configs give it: the model fills in its sizes."""
    unet = partial(UNetModel, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                   num_heads=2, num_groups=8, **(unet_keywords or {}))
    return DiffusionModel(unet, NoiseSchedule("linear", 100), partial(torch.optim.Adam, lr=2e-3),
                          first_stage=first_stage or {"config": FIRST_STAGE},
                          conditioner=conditioner if conditioner is not None else CONDITIONERS["text"](),
                          image_size=16, ema={"decay": 0.9}, clip_denoised=False, **kwargs)


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def randomise(module: torch.nn.Module) -> None:
    """Give every weight a random value, so the zero-initialised output layers no longer hide the inputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


def test_cross_attention_uses_the_prompt() -> None:
    model = tiny_ldm().eval()
    randomise(model.unet)
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([10, 50])

    def predict(prompt: str) -> torch.Tensor:
        cond = model.unet_conditions(model.conditioner, {"caption": [prompt] * 2})
        return model.apply_unet(model.unet, x, t, cond)

    red, blue = predict("a red circle"), predict("a blue square")
    assert torch.equal(red, predict("a red circle"))
    assert (red - blue).abs().mean() > 1e-3 * red.abs().mean()


def test_scale_factor_from_first_batch_makes_unit_std_latents() -> None:
    model = tiny_ldm(sample_posterior=False)
    x = images(16)
    assert model.scale_factor.item() == 1.0
    model.fit_scale_factor(x)
    assert model.encode(x).std().item() == pytest.approx(1.0, rel=1e-4)
    assert model.state_dict()["scale_factor"] == model.scale_factor
    restored = tiny_ldm(sample_posterior=False)
    restored.load_state_dict(model.state_dict())
    assert restored.scale_factor.item() == pytest.approx(model.scale_factor.item())


def test_first_stage_is_frozen_and_outside_the_optimizer() -> None:
    model = tiny_ldm().train()
    assert not model.first_stage.training
    assert not any(p.requires_grad for p in model.first_stage.parameters())
    optimized = {id(p) for p in model.trained().parameters()}
    assert not optimized & {id(p) for p in model.first_stage.parameters()}
    assert optimized >= {id(p) for p in model.conditioner.parameters()}  # the text encoder trains
    assert any(key.startswith("ema.module.conditioner.embedders.caption.encoder.") for key in model.state_dict())
    assert any(key.startswith("first_stage.") for key in model.state_dict())


def test_loss_falls_on_one_batch() -> None:
    torch.manual_seed(0)
    model = tiny_ldm(Conditioner(caption=text(ucg_rate=0.0)), sample_posterior=False)
    batch = {"image": images(8), "caption": ["a red circle", "a blue square"] * 4}
    model.fit_scale_factor(batch["image"])
    optimizer = model.optimizer(model.trained().parameters())
    start = sum(model.loss(batch, drop=True)[0].mean().item() for _ in range(5)) / 5
    for _ in range(120):
        loss = model.loss(batch, drop=True)[0].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = sum(model.loss(batch)[0].mean().item() for _ in range(5)) / 5
    assert end < 0.6 * start


@pytest.mark.parametrize("kind", sorted(CONDITIONERS))
def test_every_kind_of_condition_trains_and_samples(kind: str) -> None:
    model = tiny_ldm(CONDITIONERS[kind]())
    batch = {"image": images(4), "caption": ["a red circle"] * 4, "label": torch.tensor([0, 1, 2, 0]),
             "mask": torch.rand(4, 1, 16, 16)}
    loss, _ = model.loss(batch, drop=True)
    loss.mean().backward()
    assert torch.isfinite(loss).all()
    conditions = {key: batch[key] for key in model.conditioner.input_keys}
    out = model.sample(4, conditions, steps=3, scale=3.0 if model.conditioner.guided else 1.0)
    assert out.shape == (4, 3, 16, 16) and out.abs().max() <= 1
    logged = model.log_images(batch)
    assert logged["samples"].shape == (4, 3, 16, 16) and len(logged["denoise_row"]) > 1
    assert ("samples_cfg" in logged) == model.conditioner.guided


def test_invalid_configurations_fail_clearly() -> None:
    with pytest.raises(ValueError, match="needs a run directory"):
        tiny_ldm(first_stage={"experiment": "autoencoder_kl_shapes"})
    with pytest.raises(ValueError, match="channels=3 does not fit the first stage, whose latents have 2"):
        tiny_ldm(channels=3)
    model = tiny_ldm()
    with pytest.raises(ValueError, match="multiples of 4"):
        model.sample(1, {"caption": ["a red circle"]}, steps=2, size=(18, 16))
    with pytest.raises(ValueError, match="needs a conditional model"):
        tiny_ldm(Conditioner()).sample(1, steps=2, scale=3.0)
    with pytest.raises(ValueError, match=r"conditions \['prompt'\] are not read by this model.*\['caption'\]"):
        model.sample(conditions={"prompt": ["a red circle"]}, steps=2)
    with pytest.raises(ValueError, match=r"conditioned on \['mask'\] maps: pass them"):
        tiny_ldm(CONDITIONERS["concat"]()).sample(1, steps=2)


def test_prompt_sampling_is_reproducible_and_sized() -> None:
    model = tiny_ldm().eval()
    randomise(model.unet)
    kwargs = {"conditions": {"caption": ["a red circle", "a blue square"]}, "steps": 4, "scale": 3.0}
    first = model.sample(generator=torch.Generator().manual_seed(1), **kwargs)
    second = model.sample(generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(first, second)
    assert model.sample(conditions={"caption": ["a red circle"]}, steps=2, size=(24, 32)).shape == (1, 3, 24, 32)


def test_img2img_and_inpainting() -> None:
    model = tiny_ldm().eval()
    randomise(model.unet)
    init = images(2)
    prompts = {"caption": ["a red circle", "a blue square"]}
    reconstruction = model.decode(model.encode(init))
    kept = model.sample(conditions=prompts, steps=5, init=ImageInit(init, keep_mask=torch.ones(1, 1, 16, 16)))
    torch.testing.assert_close(kept, reconstruction)
    weak = model.sample(conditions=prompts, steps=10, init=ImageInit(init, 0.1),
                        generator=torch.Generator().manual_seed(0))
    strong = model.sample(conditions=prompts, steps=10, init=ImageInit(init, 1.0),
                          generator=torch.Generator().manual_seed(0))
    assert (weak - reconstruction).abs().mean() < (strong - reconstruction).abs().mean()
    half = torch.zeros(1, 1, 16, 16)
    half[..., :8] = 1  # keep the left half
    model.decode = lambda z: z  # compare latents: the kept latent columns end exactly as the init's
    painted = model.sample(conditions=prompts, steps=5, init=ImageInit(init, keep_mask=half))
    latents = model.encode(init)
    torch.testing.assert_close(painted[..., :4], latents[..., :4])
    assert (painted[..., 4:] - latents[..., 4:]).abs().mean() > 0.1
    with pytest.raises(ValueError, match="strength must be in"):
        model.sample(conditions=prompts, steps=5, init=ImageInit(init, 1.5))


def test_coordinate_channels() -> None:
    maps = coordinates(torch.zeros(2, 4, 3, 5))
    assert maps.shape == (2, 2, 3, 5)
    assert maps[0, 0, 0].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0] and maps[0, 1, :, 0].tolist() == [-1.0, 0.0, 1.0]
    model = tiny_ldm(coord_channels=True)
    loss, _ = model.loss({"image": images(2), "caption": ["a red circle"] * 2}, drop=True)
    assert torch.isfinite(loss).all()


def test_vq_first_stage() -> None:
    vq = {**FIRST_STAGE, "_target_": "pixelforge.models.vq.VQModel", "n_embed": 16}
    model = tiny_ldm(first_stage={"config": vq})
    assert type(model.first_stage).__name__ == "VQModel"
    loss, _ = model.loss({"image": images(2), "caption": ["a red circle"] * 2}, drop=True)
    assert torch.isfinite(loss).all()
    assert model.sample(conditions={"caption": ["a red circle"]}, steps=2, scale=2.0).shape == (1, 3, 16, 16)


def test_pooled_text_embedding_joins_the_timestep_embedding() -> None:
    tokens, mask = torch.randn(2, 3, 4), torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(masked_mean(tokens, mask), torch.stack([tokens[0, :2].mean(0), tokens[1, 0]]))
    model = tiny_ldm(unet_keywords={"pooled_dim": 16}).eval()
    randomise(model.unet)
    cond = model.unet_conditions(model.conditioner, {"caption": ["a red circle", "a blue square"]})
    assert cond["pooled"].shape == (2, 16)
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([10, 50])
    with_pooled = model.apply_unet(model.unet, x, t, cond)
    zeroed = model.apply_unet(model.unet, x, t, {**cond, "pooled": torch.zeros_like(cond["pooled"])})
    assert not torch.allclose(with_pooled, zeroed)
    with pytest.raises(ValueError, match="pooled missing"):
        model.unet(x, t, context=cond["context"], context_mask=cond["context_mask"])


@pytest.mark.parametrize("coord_channels", [False, True])
def test_a_partial_unet_gets_its_sizes_from_the_first_stage_coordinates_and_conditioner(coord_channels: bool) -> None:
    model = tiny_ldm(Conditioner(caption=text(dim=24), label=Embedder(Labels([3, 2]), ["shape", "size"])),
                     coord_channels=coord_channels)
    unet = model.unet
    first_conv, last_conv = unet.input_blocks[0][0], unet.out[-1]
    assert (first_conv.in_channels, last_conv.out_channels, unet.context_dim) == (2 + 2 * coord_channels, 2, 24)
    assert unet.num_classes == (3, 2) and model.cond_keys == ["shape", "size"]
    batch = {"image": images(2), "caption": ["a red circle", "a blue square"], "shape": torch.tensor([0, 2]),
             "size": torch.tensor([1, 0])}
    assert torch.isfinite(model.training_step(batch, 0))  # the derived sizes fit: the step runs
    assert tiny_ldm(CONDITIONERS["concat"]()).unet.input_blocks[0][0].in_channels == 3  # latents + the map


def test_a_unet_size_that_contradicts_the_model_is_refused() -> None:
    tiny_ldm(Conditioner(caption=text(dim=24)), unet_keywords={"context_dim": 24, "in_channels": 4},
             coord_channels=True)  # sizes that agree are accepted
    with pytest.raises(ValueError, match=r"model.unet.in_channels=6 does not fit the model, which needs 4 .*"
                                         r"coordinate maps.*leave model.unet.in_channels out"):
        tiny_ldm(unet_keywords={"in_channels": 6}, coord_channels=True)
    built = UNetModel(2, 2, 16, (1, 2), 1, (1, 2), num_groups=8, context_dim=8)
    with pytest.raises(ValueError, match=r"the U-Net's context_dim \(8\) must be 16"):
        DiffusionModel(built, NoiseSchedule("linear", 10), torch.optim.Adam, first_stage={"config": FIRST_STAGE},
                       conditioner=CONDITIONERS["text"](), image_size=16)


def test_decoding_in_slices_gives_the_same_images() -> None:
    model = tiny_ldm().eval()
    z = torch.randn(3, 2, 8, 8)
    whole = model.decode(z)
    model.decode_slice = 1
    torch.testing.assert_close(model.decode(z), whole)


def test_log_prompts_replace_the_batch_captions_in_image_logs() -> None:
    prompts = ["a red circle", "a blue square", "a red square"]
    logged = tiny_ldm(log_prompts=prompts).log_images({"image": images(2), "caption": ["a red circle"] * 2})
    assert logged["samples"].shape[0] == 3 and logged["conditioning"].shape[0] == 3
    with pytest.raises(ValueError, match=r"log_prompts need a model conditioned on a prompt alone.*'label'"):
        tiny_ldm(CONDITIONERS["labels"](), log_prompts=prompts)
