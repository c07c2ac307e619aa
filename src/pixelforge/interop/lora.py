"""LoRA adapters of a pixelforge text-to-image model in the kohya format that diffusers' ``load_lora_weights`` and
most SD tools read (``lora_unet_<diffusers module>`` and ``lora_te_<transformers module>``, each with
``.lora_down.weight``, ``.lora_up.weight`` and ``.alpha``), and merging such a file into a model.

pixelforge fuses q/k/v (and k/v) into one projection; a LoRA of the fused layer is the same A with B split by
rows, so each of q, k and v gets an exact adapter of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from pixelforge.interop.diffusers_names import unet_block
from pixelforge.models.diffusion import DiffusionModel
from pixelforge.modules.encoders.huggingface import FrozenTextTower
from pixelforge.modules.lora import TEXT_TARGETS, lora_layers

# pixelforge projection -> the diffusers attention layers it holds, in row order
PROJECTIONS = {"self_attn.qkv": ("attn1.to_q", "attn1.to_k", "attn1.to_v"), "self_attn.proj": ("attn1.to_out.0",),
               "cross_attn.q": ("attn2.to_q",), "cross_attn.kv": ("attn2.to_k", "attn2.to_v"),
               "cross_attn.proj": ("attn2.to_out.0",)}
LAYER = re.compile(r"^(.+\.1\.)blocks\.(\d+)\.(\w+\.\w+)$")  # <block>.1.blocks.<n>.<projection>
PREFIXES = ("lora_unet_", "lora_te_")


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


def unet_modules(unet: nn.Module) -> dict[str, list[str]]:
    """Each attention projection of a pixelforge U-Net -> the kohya modules it holds, in row order."""
    out = {}
    for name, _ in unet.named_modules():
        try:
            block, projection = diffusers_block(name, unet.num_res_blocks)
        except ValueError:
            continue
        out[name] = ["lora_unet_" + f"{block}.{part}".replace(".", "_") for part in PROJECTIONS[projection]]
    return out


def text_modules(text_model: nn.Module) -> dict[str, list[str]]:
    """Each attention projection of a transformers CLIP text model -> its kohya module (``text_model.`` named)."""
    return {name: ["lora_te_" + ("text_model." + name.removeprefix("text_model.")).replace(".", "_")]
            for name, _ in text_model.named_modules() if re.fullmatch(TEXT_TARGETS, name)}


def adaptable(model: DiffusionModel, use_ema: bool = True) -> list[tuple[nn.Module, dict[str, list[str]]]]:
    """(network, its kohya module names) of the U-Net that samples and, for a CLIP text tower, the text model."""
    unet, conditioner = model.networks(use_ema)
    parts = [(unet, unet_modules(unet))]
    towers = [e.encoder for e in conditioner.embedders.values() if isinstance(e.encoder, FrozenTextTower)]
    parts += [(tower.model, text_modules(tower.model)) for tower in towers]
    return parts


def kohya_state_dict(model: DiffusionModel) -> dict[str, torch.Tensor]:
    """The adapters of ``model`` (injected by ``modules.lora.add_lora`` into its U-Net and text model) under kohya
    names."""
    out: dict[str, torch.Tensor] = {}
    for network, names in adaptable(model, use_ema=False):
        for name, down, up, scale in lora_layers(network):
            if name not in names:
                raise ValueError(f"{name!r} is not an attention projection that kohya's format names")
            targets = names[name]
            for target, rows in zip(targets, up.chunk(len(targets)), strict=True):
                out[f"{target}.lora_down.weight"] = down.detach().clone()  # each its own tensor (safetensors)
                out[f"{target}.lora_up.weight"] = rows.detach().contiguous()
                out[f"{target}.alpha"] = torch.tensor(float(scale * down.shape[0]))
    if not out:
        raise ValueError("the model has no LoRA adapters to write")
    return out


def merge_kohya(model: DiffusionModel, state: Mapping[str, torch.Tensor], scale: float = 1.0) -> int:
    """Add ``scale`` x a kohya LoRA file's adapters into the weights of the U-Net that samples and the text model;
    returns the layers changed. A module the file names that this model lacks is an error naming it."""
    targets: dict[str, tuple[torch.Tensor, int, int]] = {}  # kohya module -> (our weight, first row, rows)
    for network, names in adaptable(model):
        layers = dict(network.named_modules())
        for name, parts in names.items():
            weight = layers[name].weight
            rows = weight.shape[0] // len(parts)
            targets.update({part: (weight, i * rows, rows) for i, part in enumerate(parts)})
    modules = sorted({key.split(".")[0] for key in state if key.startswith(PREFIXES)})
    unknown = [m for m in modules if m not in targets]
    if unknown:
        raise KeyError(f"the LoRA file adapts {len(unknown)} layer(s) this model does not have: {unknown[:5]}")
    with torch.no_grad():
        for module in modules:
            weight, start, rows = targets[module]
            down, up = state[f"{module}.lora_down.weight"].float(), state[f"{module}.lora_up.weight"].float()
            alpha = float(state.get(f"{module}.alpha", torch.tensor(float(down.shape[0]))))
            delta = (up @ down) * (scale * alpha / down.shape[0])
            weight[start:start + rows] += delta.to(weight.dtype)
    return len(modules)
