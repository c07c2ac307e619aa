"""CompVis key names <-> diffusers' for Stable Diffusion's U-Net and KL autoencoder, so diffusers folders are
read and written without diffusers (the same arithmetic diffusers' own single-file converter does, both ways).

Keys go through CompVis names, which ``interop.compvis`` maps onto pixelforge's modules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from pixelforge.interop.compvis import rename

RESNET = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
          ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut.")]
VAE_RESNET = [("nin_shortcut.", "conv_shortcut.")]
VAE_ATTENTION = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."),
                 ("proj_out.", "to_out.0.")]
TOP = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
       "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out."}


def unet_block(key: str, num_res_blocks: int) -> tuple[str, str, str]:
    """(CompVis block prefix, diffusers block prefix, kind: resnet / attention / sampler) of a U-Net key."""
    r = num_res_blocks
    if match := re.match(r"^input_blocks\.(\d+)\.(\d+)\.", key):
        i, j = map(int, match.groups())
        level, k = divmod(i - 1, r + 1)
        if k == r:
            return match.group(0), f"down_blocks.{level}.downsamplers.0.", "sampler"
        kind = "resnet" if j == 0 else "attention"
        return match.group(0), f"down_blocks.{level}.{kind}s.{k}.", kind
    if match := re.match(r"^middle_block\.(\d)\.", key):
        j = int(match.group(1))
        return match.group(0), ("mid_block.attentions.0." if j == 1 else f"mid_block.resnets.{j // 2}."), \
            "attention" if j == 1 else "resnet"
    if match := re.match(r"^output_blocks\.(\d+)\.(\d+)\.", key):
        i, j = map(int, match.groups())
        level, k = divmod(i, r + 1)
        if j == 0:
            return match.group(0), f"up_blocks.{level}.resnets.{k}.", "resnet"
        if key.startswith(match.group(0) + "conv."):
            return match.group(0), f"up_blocks.{level}.upsamplers.0.", "sampler"
        return match.group(0), f"up_blocks.{level}.attentions.{k}.", "attention"
    raise KeyError(f"{key!r} is no CompVis U-Net key")


def top_level(key: str, reverse: bool = False) -> str | None:
    """``key`` renamed when it belongs to the U-Net's first or last layers or its timestep MLP, else None."""
    for ours, theirs in TOP.items():
        old, new = (theirs, ours) if reverse else (ours, theirs)
        if key.startswith(old):
            return new + key[len(old):]
    return None


def unet_to_diffusers(state: Mapping[str, torch.Tensor], num_res_blocks: int) -> dict[str, torch.Tensor]:
    """CompVis U-Net weights (no prefix) under diffusers' ``UNet2DConditionModel`` names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if (renamed := top_level(key)) is not None:
            out[renamed] = value
            continue
        ours, theirs, kind = unet_block(key, num_res_blocks)
        rest = key[len(ours):]
        if kind == "resnet":
            rest = rename(rest, RESNET)
        elif kind == "sampler":
            rest = rest.replace("op.", "conv.")
        out[theirs + rest] = value
    return out


def unet_from_diffusers(state: Mapping[str, torch.Tensor], num_res_blocks: int,
                        levels: int) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` weights under CompVis names (the inverse of ``unet_to_diffusers``)."""
    r = num_res_blocks
    blocks: dict[str, tuple[str, str]] = {  # diffusers block prefix -> (CompVis prefix, kind)
        "mid_block.resnets.0.": ("middle_block.0.", "resnet"), "mid_block.attentions.0.": ("middle_block.1.", "x"),
        "mid_block.resnets.1.": ("middle_block.2.", "resnet")}
    for level in range(levels):
        for k in range(r):
            blocks[f"down_blocks.{level}.resnets.{k}."] = (f"input_blocks.{1 + level * (r + 1) + k}.0.", "resnet")
            blocks[f"down_blocks.{level}.attentions.{k}."] = (f"input_blocks.{1 + level * (r + 1) + k}.1.", "x")
        blocks[f"down_blocks.{level}.downsamplers.0."] = (f"input_blocks.{(level + 1) * (r + 1)}.0.", "sampler")
        for k in range(r + 1):
            blocks[f"up_blocks.{level}.resnets.{k}."] = (f"output_blocks.{level * (r + 1) + k}.0.", "resnet")
            blocks[f"up_blocks.{level}.attentions.{k}."] = (f"output_blocks.{level * (r + 1) + k}.1.", "x")
    attended = {m.group(1) for key in state if (m := re.match(r"^(up_blocks\.\d+)\.attentions\.", key))}
    for level in range(levels):  # an upsampler follows the block's attention, when it has one
        position = 2 if f"up_blocks.{level}" in attended else 1
        blocks[f"up_blocks.{level}.upsamplers.0."] = (f"output_blocks.{level * (r + 1) + r}.{position}.", "up")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if (renamed := top_level(key, reverse=True)) is not None:
            out[renamed] = value
            continue
        prefix = next((p for p in blocks if key.startswith(p)), None)
        if prefix is None:
            raise KeyError(f"{key!r} is no diffusers U-Net key of this architecture")
        ours, kind = blocks[prefix]
        rest = key[len(prefix):]
        if kind == "resnet":
            rest = rename(rest, RESNET, reverse=True)
        elif kind == "sampler":
            rest = rest.replace("conv.", "op.")
        out[ours + rest] = value
    return out


def vae_blocks(levels: int, num_res_blocks: int) -> list[tuple[str, str]]:
    """(CompVis prefix, diffusers prefix) of every block of the KL autoencoder."""
    pairs = [(f"{part}.mid.block_{i + 1}.", f"{part}.mid_block.resnets.{i}.") for part in ("encoder", "decoder")
             for i in range(2)]
    pairs += [(f"{part}.norm_out.", f"{part}.conv_norm_out.") for part in ("encoder", "decoder")]
    for level in range(levels):
        pairs += [(f"encoder.down.{level}.block.{m}.", f"encoder.down_blocks.{level}.resnets.{m}.")
                  for m in range(num_res_blocks)]
        pairs.append((f"encoder.down.{level}.downsample.", f"encoder.down_blocks.{level}.downsamplers.0."))
        up = levels - 1 - level  # CompVis numbers decoder levels from the highest resolution, diffusers from the lowest
        pairs += [(f"decoder.up.{level}.block.{m}.", f"decoder.up_blocks.{up}.resnets.{m}.")
                  for m in range(num_res_blocks + 1)]
        pairs.append((f"decoder.up.{level}.upsample.", f"decoder.up_blocks.{up}.upsamplers.0."))
    return pairs


def vae_to_diffusers(state: Mapping[str, torch.Tensor], levels: int, num_res_blocks: int) -> dict[str, torch.Tensor]:
    """CompVis KL-autoencoder weights (no prefix) under diffusers' ``AutoencoderKL`` names."""
    return _vae_rename(state, levels, num_res_blocks, reverse=False)


def vae_from_diffusers(state: Mapping[str, torch.Tensor], levels: int,
                       num_res_blocks: int) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` weights under CompVis names."""
    return _vae_rename(state, levels, num_res_blocks, reverse=True)


def _vae_rename(state: Mapping[str, torch.Tensor], levels: int, num_res_blocks: int,
                reverse: bool) -> dict[str, torch.Tensor]:
    """Both directions of the KL-autoencoder renaming; attention weights are 1x1 convs in CompVis, linears here."""
    blocks = [(b, a) for a, b in vae_blocks(levels, num_res_blocks)] if reverse else vae_blocks(levels, num_res_blocks)
    attention = ("mid_block.attentions.0.", "mid.attn_1.") if reverse else ("mid.attn_1.", "mid_block.attentions.0.")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix = next((old for old, _ in blocks if key.startswith(old)), None)
        if prefix is not None:
            new = dict(blocks)[prefix] + rename(key[len(prefix):], VAE_RESNET, reverse=reverse)
        elif attention[0] in key:
            head, rest = key.split(attention[0])
            new = head + attention[1] + rename(rest, VAE_ATTENTION, reverse=reverse)
            if value.dim() == (2 if reverse else 4):  # a projection's weight
                value = value[..., None, None] if reverse else value.flatten(1)
        elif key.split(".")[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv"):
            new = key  # conv_in, conv_out, quant_conv, post_quant_conv
        else:
            raise KeyError(f"{key!r} is no key of a KL autoencoder")
        out[new] = value
    return out
