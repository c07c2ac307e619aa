"""LoRA adapters of a pixelforge U-Net in the kohya format (``lora_unet_<diffusers module>.lora_down/lora_up``,
``.alpha``) that diffusers' ``load_lora_weights`` and most SD tools read, and merging such a file into a U-Net.

pixelforge fuses q/k/v (and k/v) into one projection; a LoRA of the fused layer is the same A with B split by
rows, so each of q, k and v gets an exact adapter of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from pixelforge.interop.diffusers_names import unet_block
from pixelforge.modules.lora import lora_layers

# pixelforge projection -> the diffusers attention layers it holds, in row order
PROJECTIONS = {"self_attn.qkv": ("attn1.to_q", "attn1.to_k", "attn1.to_v"), "self_attn.proj": ("attn1.to_out.0",),
               "cross_attn.q": ("attn2.to_q",), "cross_attn.kv": ("attn2.to_k", "attn2.to_v"),
               "cross_attn.proj": ("attn2.to_out.0",)}
LAYER = re.compile(r"^(.+\.1\.)blocks\.(\d+)\.(\w+\.\w+)$")  # <block>.1.blocks.<n>.<projection>


def diffusers_block(name: str, num_res_blocks: int) -> tuple[str, str]:
    """(diffusers transformer block, pixelforge projection) of an adapted pixelforge layer name."""
    match = LAYER.match(name)
    if match is None or match.group(3) not in PROJECTIONS:
        raise ValueError(f"{name!r} is not an attention projection of a U-Net transformer block")
    block, index, projection = match.groups()
    _, theirs, kind = unet_block(block, num_res_blocks)  # pixelforge and CompVis share the block prefixes
    if kind != "attention":
        raise ValueError(f"{name!r} is not in a U-Net transformer block")
    return f"{theirs}transformer_blocks.{index}", projection


def kohya_state_dict(unet: nn.Module, num_res_blocks: int) -> dict[str, torch.Tensor]:
    """The adapters of ``unet`` (injected by ``modules.lora.add_lora``) under kohya names."""
    out: dict[str, torch.Tensor] = {}
    for name, down, up, scale in lora_layers(unet):
        block, projection = diffusers_block(name, num_res_blocks)
        targets = PROJECTIONS[projection]
        for target, rows in zip(targets, up.chunk(len(targets)), strict=True):
            key = "lora_unet_" + f"{block}.{target}".replace(".", "_")
            out[f"{key}.lora_down.weight"] = down.detach().clone()  # each its own tensor (safetensors)
            out[f"{key}.lora_up.weight"] = rows.detach().contiguous()
            out[f"{key}.alpha"] = torch.tensor(float(scale * down.shape[0]))
    if not out:
        raise ValueError("the U-Net has no LoRA adapters to write")
    return out


def merge_kohya(unet: nn.Module, state: Mapping[str, torch.Tensor], num_res_blocks: int, scale: float = 1.0) -> int:
    """Add ``scale`` x a kohya LoRA file's U-Net adapters into ``unet``'s weights; returns the layers changed. A
    module the file names that this U-Net lacks is an error naming it."""
    targets: dict[str, tuple[str, int, int]] = {}  # kohya module -> (our weight, first row, rows)
    for name, module in unet.named_modules():
        try:
            block, projection = diffusers_block(name, num_res_blocks)
        except ValueError:
            continue
        parts = PROJECTIONS[projection]
        rows = module.weight.shape[0] // len(parts)
        for i, part in enumerate(parts):
            targets["lora_unet_" + f"{block}.{part}".replace(".", "_")] = (f"{name}.weight", i * rows, rows)
    weights = dict(unet.named_parameters())
    modules = sorted({key.split(".")[0] for key in state if key.startswith("lora_unet_")})
    unknown = [m for m in modules if m not in targets]
    if unknown:
        raise KeyError(f"the LoRA file adapts {len(unknown)} layer(s) this U-Net does not have: {unknown[:5]}")
    with torch.no_grad():
        for module in modules:
            weight, start, rows = targets[module]
            down, up = state[f"{module}.lora_down.weight"].float(), state[f"{module}.lora_up.weight"].float()
            alpha = float(state.get(f"{module}.alpha", torch.tensor(float(down.shape[0]))))
            delta = (up @ down) * (scale * alpha / down.shape[0])
            weights[weight][start:start + rows] += delta.to(weights[weight].dtype)
    return len(modules)
