"""pixelforge's module names <-> CompVis / Stability key names, for the U-Net and the KL autoencoder.

The blocks compute what CompVis's do (checked against diffusers, which converts CompVis files itself); only the
names differ, and pixelforge fuses attention projections (q/k/v into ``qkv``, k/v into ``kv``) that CompVis keeps
apart. Every key must be matched by a rule: an unknown one is an error naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

UNET_PREFIX = "model.diffusion_model."  # where a CompVis checkpoint keeps the U-Net
VAE_PREFIX = "first_stage_model."

# pixelforge -> CompVis names of U-Net key parts (each occurs in one kind of block only)
UNET_RENAMES = [
    ("time_embed.mlp.", "time_embed."), (".in_norm.", ".in_layers.0."), (".in_conv.", ".in_layers.2."),
    (".emb_proj.1.", ".emb_layers.1."), (".out_norm.", ".out_layers.0."), (".out_conv.", ".out_layers.3."),
    (".skip.", ".skip_connection."), (".blocks.", ".transformer_blocks."),
    (".self_attn.proj.", ".attn1.to_out.0."), (".cross_attn.proj.", ".attn2.to_out.0."),
    (".cross_attn.q.", ".attn2.to_q."), (".mlp.0.proj.", ".ff.net.0.proj."), (".mlp.2.", ".ff.net.2."),
]
# fused pixelforge projections -> the CompVis ones they hold, in order
UNET_FUSED = {".self_attn.qkv.": (".attn1.to_q.", ".attn1.to_k.", ".attn1.to_v."),
              ".cross_attn.kv.": (".attn2.to_k.", ".attn2.to_v.")}
UNET_KEY = re.compile(r"^(time_embed\.|out\.[02]\.|(input_blocks|middle_block|output_blocks)\.)")
VAE_KEY = re.compile(r"^(encoder|decoder|quant_conv|post_quant_conv)\.")


def unknown(keys: list[str], what: str) -> KeyError:
    """The error for keys no rule maps, naming them."""
    return KeyError(f"{len(keys)} {what} key(s) have no counterpart: {keys[:8]}")


def rename(key: str, renames: list[tuple[str, str]], reverse: bool = False) -> str:
    """``key`` with each part renamed in order (CompVis -> pixelforge, in reverse order, with ``reverse``)."""
    for ours, theirs in reversed(renames) if reverse else renames:
        key = key.replace(theirs, ours) if reverse else key.replace(ours, theirs)
    return key


def split_fused(state: Mapping[str, torch.Tensor], fused: Mapping[str, tuple[str, ...]]) -> dict[str, torch.Tensor]:
    """``state`` with every fused projection split into the separate ones it holds."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        part = next((part for part in fused if part in key), None)
        if part is None:
            out[key] = value
        else:
            names = fused[part]
            out.update({key.replace(part, name): chunk for name, chunk in zip(names, value.chunk(len(names)),
                                                                               strict=True)})
    return out


def join_fused(state: Mapping[str, torch.Tensor], fused: Mapping[str, tuple[str, ...]]) -> dict[str, torch.Tensor]:
    """``state`` with separate projections joined into the fused ones (the inverse of ``split_fused``)."""
    out = dict(state)
    for part, names in fused.items():
        for key in [k for k in state if names[0] in k]:
            parts = [key.replace(names[0], name) for name in names]
            missing = [p for p in parts if p not in out]
            if missing:
                raise KeyError(f"{key} comes without {missing}")
            out[key.replace(names[0], part)] = torch.cat([out.pop(p) for p in parts])
    return out


def unet_to_compvis(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pixelforge ``UNetModel`` state dict under CompVis's names (without ``model.diffusion_model.``)."""
    bad = [k for k in state if not UNET_KEY.match(k)]
    if bad:
        raise unknown(bad, "pixelforge U-Net (SD has no class or pooled embedding)")
    return split_fused({rename(k, UNET_RENAMES): v for k, v in state.items()}, UNET_FUSED)


def unet_from_compvis(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CompVis U-Net weights (without ``model.diffusion_model.``) under pixelforge's names."""
    bad = [k for k in state if not UNET_KEY.match(k)]
    if bad:
        raise unknown(bad, "CompVis U-Net")
    return {rename(k, UNET_RENAMES, reverse=True): v for k, v in join_fused(state, UNET_FUSED).items()}


# the first stage: pixelforge's encoder and decoder are flat sequences, CompVis nests them by level
VAE_RENAMES = [(".skip.", ".nin_shortcut."), ("mid.0.", "mid.block_1."), ("mid.1.", "mid.attn_1."),
               ("mid.2.", "mid.block_2."), ("attn_1.attn.proj.", "attn_1.proj_out.")]
VAE_FUSED = {"attn_1.attn.qkv.": ("attn_1.q.", "attn_1.k.", "attn_1.v.")}


def vae_layout(levels: int, num_res_blocks: int) -> dict[str, str]:
    """pixelforge's ``encoder.down.J.`` / ``decoder.up.J.`` -> CompVis's ``down.L.block.M.`` / ``.downsample.``
    and ``up.L.block.M.`` / ``.upsample.`` (CompVis numbers decoder levels from the highest resolution)."""
    names: dict[str, str] = {}
    j = 0
    for level in range(levels):
        for m in range(num_res_blocks):
            names[f"encoder.down.{j}."] = f"encoder.down.{level}.block.{m}."
            j += 1
        if level < levels - 1:
            names[f"encoder.down.{j}.op."] = f"encoder.down.{level}.downsample.conv."
            j += 1
    j = 0
    for level in reversed(range(levels)):
        for m in range(num_res_blocks + 1):
            names[f"decoder.up.{j}."] = f"decoder.up.{level}.block.{m}."
            j += 1
        if level > 0:
            names[f"decoder.up.{j}."] = f"decoder.up.{level}.upsample."
            j += 1
    return names


def conv1x1(weight: torch.Tensor) -> torch.Tensor:
    """A linear layer's weight as the 1x1 conv CompVis's VAE attention uses."""
    return weight[..., None, None] if weight.dim() == 2 else weight


def vae_to_compvis(state: Mapping[str, torch.Tensor], levels: int, num_res_blocks: int) -> dict[str, torch.Tensor]:
    """A pixelforge KL first stage's autoencoder weights under CompVis's names (without ``first_stage_model.``);
    the training-only parts (discriminator, perceptual network, counters) are left out."""
    layout = sorted(vae_layout(levels, num_res_blocks).items(), key=lambda item: -len(item[0]))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not VAE_KEY.match(key):
            continue
        key = next((key.replace(ours, theirs, 1) for ours, theirs in layout if key.startswith(ours)), key)
        out[rename(key, VAE_RENAMES)] = value
    out = split_fused(out, VAE_FUSED)
    return {k: conv1x1(v) if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", k) else v for k, v in out.items()}


def vae_from_compvis(state: Mapping[str, torch.Tensor], levels: int, num_res_blocks: int) -> dict[str, torch.Tensor]:
    """CompVis first-stage weights (without ``first_stage_model.``) under pixelforge's names."""
    bad = [k for k in state if not VAE_KEY.match(k)]
    if bad:
        raise unknown(bad, "CompVis first-stage")
    flat = {k: v.flatten(1) if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", k) else v for k, v in state.items()}
    layout = sorted(vae_layout(levels, num_res_blocks).items(), key=lambda item: -len(item[1]))
    out: dict[str, torch.Tensor] = {}
    for key, value in join_fused(flat, VAE_FUSED).items():
        key = rename(key, VAE_RENAMES, reverse=True)
        out[next((key.replace(theirs, ours, 1) for ours, theirs in layout if key.startswith(theirs)), key)] = value
    return out
