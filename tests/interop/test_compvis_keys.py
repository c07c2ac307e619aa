"""pixelforge's U-Net and KL first stage under CompVis's key names: diffusers' own single-file converter reads them
into its models, which then compute what pixelforge's compute; the names map back exactly."""

from __future__ import annotations

import pytest
import torch

from pixelforge.interop.compvis import (
    UNET_PREFIX,
    VAE_PREFIX,
    unet_from_compvis,
    unet_to_compvis,
    vae_from_compvis,
    vae_to_compvis,
)
from pixelforge.models.autoencoder_kl import AutoencoderKL
from pixelforge.modules.unet import UNetModel

diffusers = pytest.importorskip("diffusers")
single_file = pytest.importorskip("diffusers.loaders.single_file_utils")


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere, so zero-initialised layers hide nothing."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.05)
    return module.eval()


def sd_unet(v2: bool) -> UNetModel:
    """A tiny U-Net with Stable Diffusion's block design: 1.x (heads, conv proj) or 2.x (head width, linear proj)."""
    heads = {"num_head_channels": 16} if v2 else {"num_heads": 2}
    return UNetModel(4, 4, 32, (1, 2), 1, (1,), use_scale_shift_norm=False, context_dim=24, **heads,
                     transformer_norm_eps=1e-6, attention_qkv_bias=False, use_linear_in_transformer=v2)


def diffusers_unet(v2: bool):
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24, attention_head_dim=(2, 4) if v2 else 2, use_linear_projection=v2).eval()


@pytest.mark.parametrize("v2", [False, True])
def test_the_unet_under_compvis_names_computes_what_diffusers_computes(v2: bool) -> None:
    ours = randomise(sd_unet(v2))
    checkpoint = {UNET_PREFIX + k: v for k, v in unet_to_compvis(ours.state_dict()).items()}
    theirs = diffusers_unet(v2)
    theirs.load_state_dict(single_file.convert_ldm_unet_checkpoint(checkpoint, dict(theirs.config)), strict=True)
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 5, 24)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, context=context), theirs(x, t, encoder_hidden_states=context).sample,
                                   rtol=0, atol=1e-5)
    back = unet_from_compvis(unet_to_compvis(ours.state_dict()))
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


def test_the_kl_first_stage_under_compvis_names_encodes_and_decodes_as_diffusers() -> None:
    ddconfig = {"in_channels": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 4,
                "norm_eps": 1e-6, "asymmetric_downsample": True}
    ours = randomise(AutoencoderKL(ddconfig=ddconfig, embed_dim=4, optimizer=torch.optim.Adam, image_size=16))
    checkpoint = {VAE_PREFIX + k: v for k, v in vae_to_compvis(ours.state_dict(), 2, 1).items()}
    theirs = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                                     block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                     up_block_types=("UpDecoderBlock2D",) * 2).eval()
    theirs.load_state_dict(single_file.convert_ldm_vae_checkpoint(checkpoint, dict(theirs.config)), strict=True)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mean = ours.encode(x).mean
        torch.testing.assert_close(mean, theirs.encode(x).latent_dist.mean, rtol=0, atol=1e-4)
        torch.testing.assert_close(ours.decoder_output(mean), theirs.decode(mean).sample, rtol=0, atol=1e-4)
    weights = {k: v for k, v in ours.state_dict().items() if k != "batches_seen"}
    back = vae_from_compvis(vae_to_compvis(weights, 2, 1), 2, 1)
    assert back.keys() == weights.keys() and all(torch.equal(back[k], v) for k, v in weights.items())


def test_unknown_keys_are_named() -> None:
    with pytest.raises(KeyError, match=r"label_embed\.embeddings\.0\.weight"):
        unet_to_compvis(UNetModel(4, 4, 32, (1,), 1, (), num_classes=3).state_dict())
    with pytest.raises(KeyError, match=r"CompVis U-Net key\(s\) have no counterpart: \['betas'\]"):
        unet_from_compvis({"betas": torch.zeros(3)})


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_full_size_stable_diffusion_maps_one_to_one_onto_compvis_keys(version: str) -> None:
    """SD 1.5 and 2.1 built on the meta device (no memory): every CompVis key of the U-Net and the autoencoder, as
    diffusers' converter reads them, lands on diffusers' own full-size model with its shape, and back."""
    from pixelforge.interop import stable_diffusion

    with torch.device("meta"):
        model = stable_diffusion.build(version)
        theirs_unet = diffusers.UNet2DConditionModel(
            cross_attention_dim=768 if version == "v1" else 1024,
            attention_head_dim=8 if version == "v1" else [5, 10, 20, 20], use_linear_projection=version == "v2")
        theirs_vae = diffusers.AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                             latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                                             up_block_types=("UpDecoderBlock2D",) * 4)
    ours = unet_to_compvis(model.unet.state_dict())
    converted = single_file.convert_ldm_unet_checkpoint({UNET_PREFIX + k: v for k, v in ours.items()},
                                                        dict(theirs_unet.config))
    expected = {k: v.shape for k, v in theirs_unet.state_dict().items()}
    assert {k: v.shape for k, v in converted.items()} == expected
    assert sum(p.numel() for p in model.unet.parameters()) == {"v1": 859_520_964, "v2": 865_910_724}[version]
    vae = vae_to_compvis(model.first_stage.state_dict(), 4, 2)
    converted = single_file.convert_ldm_vae_checkpoint({VAE_PREFIX + k: v for k, v in vae.items()},
                                                       dict(theirs_vae.config))
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in theirs_vae.state_dict().items()}
    assert unet_from_compvis(ours).keys() == model.unet.state_dict().keys()


@pytest.mark.parametrize("v2", [False, True])
def test_diffusers_names_are_what_diffusers_own_converter_gives_and_map_back(v2: bool) -> None:
    from pixelforge.interop.diffusers_names import (
        unet_from_diffusers,
        unet_to_diffusers,
        vae_from_diffusers,
        vae_to_diffusers,
    )

    compvis = unet_to_compvis(randomise(sd_unet(v2)).state_dict())
    theirs = single_file.convert_ldm_unet_checkpoint({UNET_PREFIX + k: v for k, v in compvis.items()},
                                                     dict(diffusers_unet(v2).config))
    ours = unet_to_diffusers(compvis, num_res_blocks=1)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], v) for k, v in theirs.items())
    back = unet_from_diffusers(theirs, num_res_blocks=1, levels=2)
    assert back.keys() == compvis.keys() and all(torch.equal(back[k], v) for k, v in compvis.items())
    ddconfig = {"in_channels": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 4}
    vae = vae_to_compvis(AutoencoderKL(ddconfig=ddconfig, embed_dim=4, optimizer=torch.optim.Adam).state_dict(), 2, 1)
    config = dict(diffusers.AutoencoderKL(latent_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                                          down_block_types=("DownEncoderBlock2D",) * 2,
                                          up_block_types=("UpDecoderBlock2D",) * 2).config)
    theirs = single_file.convert_ldm_vae_checkpoint({VAE_PREFIX + k: v for k, v in vae.items()}, config)
    ours = vae_to_diffusers(vae, 2, 1)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], v) for k, v in theirs.items())
    back = vae_from_diffusers(theirs, 2, 1)
    assert back.keys() == vae.keys() and all(torch.equal(back[k], v) for k, v in vae.items())
