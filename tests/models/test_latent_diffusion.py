"""Latent diffusion: cross-attention uses the prompt, condition dropout, scale_by_std, frozen first stage,
conditioning keys, img2img and inpainting through the sampler."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from pixelforge.diffusion.schedule import NoiseSchedule
from pixelforge.models.latent_diffusion import LatentDiffusion
from pixelforge.modules.conditioning import ConditionedUNet, coordinates, masked_mean
from pixelforge.modules.encoders import TransformerTextEncoder, WordTokenizer
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


def tiny_ldm(conditioning_key: str | None = "crossattn", in_channels: int = 2, first_stage: dict | None = None,
             **kwargs) -> LatentDiffusion:
    crossattn = conditioning_key in ("crossattn", "hybrid")
    unet = UNetModel(in_channels, 2, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(1, 2), num_heads=2, num_groups=8, context_dim=16 if crossattn else None,
                     num_classes=3 if conditioning_key == "class" else None)
    encoder = TransformerTextEncoder(WordTokenizer(WORDS, max_length=6), dim=16, depth=1, heads=2) if crossattn \
        else None
    return LatentDiffusion(unet, first_stage or {"config": FIRST_STAGE}, encoder, conditioning_key=conditioning_key,
                           schedule=NoiseSchedule("linear", 100),
                           optimizer=partial(torch.optim.Adam, lr=2e-3), image_size=16, ema={"decay": 0.9},
                           clip_denoised=False, **kwargs)


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
    net = model.unet
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([10, 50])
    red = net(x, t, **net.encode(["a red circle", "a red circle"]))
    blue = net(x, t, **net.encode(["a blue square", "a blue square"]))
    again = net(x, t, **net.encode(["a red circle", "a red circle"]))
    assert torch.equal(red, again)
    assert (red - blue).abs().mean() > 1e-3 * red.abs().mean()


def test_condition_dropout_rate_is_honoured() -> None:
    model = tiny_ldm(ucg_rate=0.3)
    torch.manual_seed(0)
    dropped = model.drop_condition(["a red circle"] * 4000, model.unet)
    share = sum(p == "" for p in dropped) / 4000
    assert abs(share - 0.3) < 0.03 and set(dropped) == {"", "a red circle"}
    assert tiny_ldm(ucg_rate=0.0).drop_condition(["a red circle"] * 10, model.unet) == ["a red circle"] * 10


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
    optimized = {id(p) for p in model.unet.parameters()}
    assert not optimized & {id(p) for p in model.first_stage.parameters()}
    assert optimized >= {id(p) for p in model.unet.cond_stage.parameters()}  # the text encoder trains
    assert any(key.startswith("first_stage.") for key in model.state_dict())


def test_loss_falls_on_one_batch() -> None:
    torch.manual_seed(0)
    model = tiny_ldm(ucg_rate=0.0, sample_posterior=False)
    batch = {"image": images(8), "caption": ["a red circle", "a blue square"] * 4}
    model.fit_scale_factor(batch["image"])
    optimizer = model.optimizer(model.unet.parameters())
    start = sum(model.loss(batch, model.unet, drop=True)[0].mean().item() for _ in range(5)) / 5
    for _ in range(120):
        loss = model.loss(batch, model.unet, drop=True)[0].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = sum(model.loss(batch, model.unet, drop=False)[0].mean().item() for _ in range(5)) / 5
    assert end < 0.6 * start


@pytest.mark.parametrize(("key", "extra"), [("class", {"cond_key": "label"}), ("concat", {"concat_key": "mask"}),
                                            ("hybrid", {"concat_key": "mask"}), (None, {})])
def test_conditioning_keys_train_and_sample(key: str | None, extra: dict) -> None:
    model = tiny_ldm(key, in_channels=3 if "concat_key" in extra else 2, **extra)
    batch = {"image": images(4), "caption": ["a red circle"] * 4, "label": torch.tensor([0, 1, 2, 0]),
             "mask": torch.rand(4, 1, 16, 16)}
    loss, _ = model.loss(batch, model.unet, drop=True)
    loss.mean().backward()
    assert torch.isfinite(loss).all()
    kwargs = {"labels": batch["label"]} if key == "class" else {}
    if "concat_key" in extra:
        kwargs["concat"] = batch["mask"]
    if key in ("crossattn", "hybrid"):
        kwargs["prompts"] = batch["caption"]
    out = model.sample(4, steps=3, scale=1.0 if key in (None, "concat") else 3.0, **kwargs)
    assert out.shape == (4, 3, 16, 16) and out.abs().max() <= 1
    logged = model.log_images(batch)
    assert logged["samples"].shape == (4, 3, 16, 16) and len(logged["denoise_row"]) > 1


def test_invalid_configurations_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown conditioning_key 'text'"):
        tiny_ldm("text")
    with pytest.raises(ValueError, match="needs a cond_stage"):
        LatentDiffusion(UNetModel(2, 2, 16, (1,), 1, (), num_groups=8), {"config": FIRST_STAGE},
                        schedule=NoiseSchedule("linear", 10), optimizer=torch.optim.Adam, image_size=16)
    with pytest.raises(ValueError, match="needs a run directory"):
        LatentDiffusion(UNetModel(2, 2, 16, (1,), 1, (), num_groups=8), {"experiment": "autoencoder_kl_shapes"},
                        conditioning_key=None, schedule=NoiseSchedule("linear", 10), optimizer=torch.optim.Adam,
                        image_size=16)
    model = tiny_ldm()
    with pytest.raises(ValueError, match="multiples of 4"):
        model.sample(1, prompts=["a red circle"], steps=2, height=18, width=16)
    with pytest.raises(ValueError, match="needs a conditional model"):
        tiny_ldm(None).sample(1, steps=2, scale=3.0)


def test_prompt_sampling_is_reproducible_and_sized() -> None:
    model = tiny_ldm().eval()
    randomise(model.unet.unet)
    kwargs = {"prompts": ["a red circle", "a blue square"], "steps": 4, "scale": 3.0}
    first = model.sample(generator=torch.Generator().manual_seed(1), **kwargs)
    second = model.sample(generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(first, second)
    assert model.sample(prompts=["a red circle"], steps=2, height=24, width=32).shape == (1, 3, 24, 32)


def test_img2img_and_inpainting() -> None:
    model = tiny_ldm().eval()
    randomise(model.unet.unet)
    init = images(2)
    prompts = ["a red circle", "a blue square"]
    reconstruction = model.decode(model.encode(init))
    kept = model.sample(prompts=prompts, steps=5, init_images=init, keep_mask=torch.ones(1, 1, 16, 16))
    torch.testing.assert_close(kept, reconstruction)
    weak = model.sample(prompts=prompts, steps=10, init_images=init, strength=0.1,
                        generator=torch.Generator().manual_seed(0))
    strong = model.sample(prompts=prompts, steps=10, init_images=init, strength=1.0,
                          generator=torch.Generator().manual_seed(0))
    assert (weak - reconstruction).abs().mean() < (strong - reconstruction).abs().mean()
    half = torch.zeros(1, 1, 16, 16)
    half[..., :8] = 1  # keep the left half
    model.decode = lambda z: z  # compare latents: the kept latent columns end exactly as the init's
    painted = model.sample(prompts=prompts, steps=5, init_images=init, keep_mask=half)
    latents = model.encode(init)
    torch.testing.assert_close(painted[..., :4], latents[..., :4])
    assert (painted[..., 4:] - latents[..., 4:]).abs().mean() > 0.1
    with pytest.raises(ValueError, match="strength must be in"):
        model.sample(prompts=prompts, steps=5, init_images=init, strength=1.5)


def test_coordinate_channels() -> None:
    maps = coordinates(torch.zeros(2, 4, 3, 5))
    assert maps.shape == (2, 2, 3, 5)
    assert maps[0, 0, 0].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0] and maps[0, 1, :, 0].tolist() == [-1.0, 0.0, 1.0]
    model = tiny_ldm(in_channels=4, coord_channels=True)
    loss, _ = model.loss({"image": images(2), "caption": ["a red circle"] * 2}, model.unet, drop=True)
    assert torch.isfinite(loss).all()


def test_vq_first_stage() -> None:
    vq = {**FIRST_STAGE, "_target_": "pixelforge.models.vq.VQModel", "n_embed": 16}
    model = tiny_ldm(first_stage={"config": vq})
    assert type(model.first_stage).__name__ == "VQModel"
    loss, _ = model.loss({"image": images(2), "caption": ["a red circle"] * 2}, model.unet, drop=True)
    assert torch.isfinite(loss).all()
    assert model.sample(prompts=["a red circle"], steps=2, scale=2.0).shape == (1, 3, 16, 16)


def test_pooled_text_embedding_joins_the_timestep_embedding() -> None:
    tokens, mask = torch.randn(2, 3, 4), torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(masked_mean(tokens, mask), torch.stack([tokens[0, :2].mean(0), tokens[1, 0]]))
    unet = UNetModel(2, 2, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                     num_heads=2, num_groups=8, context_dim=16, pooled_dim=16)
    net = ConditionedUNet(unet, TransformerTextEncoder(WordTokenizer(WORDS, max_length=6), dim=16, depth=1, heads=2))
    randomise(net)
    cond = net.encode(["a red circle", "a blue square"])
    assert cond["pooled"].shape == (2, 16)
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([10, 50])
    with_pooled = net(x, t, **cond)
    assert not torch.allclose(with_pooled, net(x, t, **{**cond, "pooled": torch.zeros_like(cond["pooled"])}))
    with pytest.raises(ValueError, match="pooled missing"):
        net(x, t, context=cond["context"], context_mask=cond["context_mask"])


def partial_ldm(unet_keywords: dict | None = None, **kwargs) -> LatentDiffusion:
    """A tiny LDM whose U-Net is a partial, as the configs give it: the model fills in its sizes."""
    unet = partial(UNetModel, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                   num_heads=2, num_groups=8, **(unet_keywords or {}))
    encoder = TransformerTextEncoder(WordTokenizer(WORDS, max_length=6), dim=24, depth=1, heads=2)
    return LatentDiffusion(unet, {"config": FIRST_STAGE}, encoder, schedule=NoiseSchedule("linear", 100),
                           optimizer=partial(torch.optim.Adam, lr=2e-3), image_size=16, **kwargs)


@pytest.mark.parametrize("coord_channels", [False, True])
def test_a_partial_unet_gets_its_sizes_from_the_first_stage_coordinates_and_encoder(coord_channels: bool) -> None:
    model = partial_ldm(coord_channels=coord_channels)
    unet = model.unet.unet
    first_conv, last_conv = unet.input_blocks[0][0], unet.out[-1]
    assert (first_conv.in_channels, last_conv.out_channels, unet.context_dim) == (2 + 2 * coord_channels, 2, 24)
    loss = model.training_step({"image": images(2), "caption": ["a red circle", "a blue square"]}, 0)
    assert torch.isfinite(loss)  # the derived sizes fit: the step runs


def test_a_unet_size_that_contradicts_the_model_is_refused() -> None:
    partial_ldm({"context_dim": 24, "in_channels": 4}, coord_channels=True)  # sizes that agree are accepted
    with pytest.raises(ValueError, match=r"model.unet.in_channels=6 does not fit the model, which needs 4 .*"
                                         r"coordinate maps.*leave model.unet.in_channels out"):
        partial_ldm({"in_channels": 6}, coord_channels=True)
