"""Low-rank adapters (LoRA, Hu et al. 2021) on the attention projections of a U-Net or a text encoder, through
``peft``, the library diffusers uses: the base weights freeze, ``W x + (alpha / rank) · B A x`` trains in A
(rank x in) and B (out x rank, zero at the start)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

# pixelforge's attention projections: fused q/k/v (self), q and fused k/v (cross), and both outputs
TARGETS = r".*\.(self_attn|cross_attn)\.(qkv|q|kv|proj)$"
# a transformers CLIP text model's: q, k, v and output of every layer's self-attention
TEXT_TARGETS = r".*\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$"
INSTALL_HINT = 'pip install -e ".[sd]"'


def add_lora(module: nn.Module, rank: int = 4, alpha: float | None = None, dropout: float = 0.0,
             targets: str = TARGETS) -> nn.Module:
    """Inject rank-``rank`` adapters (scale ``alpha / rank``; ``alpha`` defaults to ``rank``) into the layers of
    ``module`` whose names match ``targets``; only the adapters stay trainable."""
    try:
        import peft
    except ImportError as error:
        raise ImportError(f"LoRA needs the peft package: {INSTALL_HINT}") from error
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha or rank, lora_dropout=dropout, target_modules=targets)
    peft.inject_adapter_in_model(config, module)
    for name, parameter in module.named_parameters():
        parameter.requires_grad_("lora_" in name)
    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError(f"no layer of {type(module).__name__} matches the LoRA targets {targets!r}")
    return module


def lora_layers(module: nn.Module) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """(layer name, A, B, scale alpha / rank) of every adapted layer (peft's default adapter)."""
    for name, layer in module.named_modules():
        if hasattr(layer, "lora_A") and "default" in getattr(layer, "lora_A", {}):
            yield name, layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
