"""All conditions of a diffusion model together, after Stability's generative-models ``GeneralConditioner``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pixelforge.conditioning.embedder import Embedder


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the real tokens (B,T,D) -> (B,D); ``mask`` (B,T bool, True = real) or None for all."""
    if mask is None:
        return tokens.mean(1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1)


class Conditioner(nn.Module):
    """Named embedders (``text=Embedder(...)``; a ``None`` one is left out) whose outputs together are the U-Net's
    conditioning keywords. No embedders: an unconditional model. Trainable encoders train, and are averaged, with
    the U-Net; frozen pretrained ones keep their weights outside the state dict.

    The raw conditions of a batch are a dict ``{embedder name: raw value}`` (``read``); ``drop`` applies each
    embedder's ``ucg_rate``, ``unconditional`` gives the guidance baseline, and calling the conditioner encodes.
    """

    def __init__(self, **embedders: Embedder | None) -> None:
        super().__init__()
        self.embedders = nn.ModuleDict({name: e for name, e in embedders.items() if e is not None})
        outputs = [e.output for e in self.embedders.values()]
        repeated = sorted({output for output in outputs if outputs.count(output) > 1})
        if repeated:
            raise ValueError(f"several embedders feed the U-Net's {repeated}; give each input one embedder")

    def embedder(self, output: str) -> Embedder | None:
        """The embedder feeding the U-Net input ``output`` (context, y or concat), if any."""
        return next((e for e in self.embedders.values() if e.output == output), None)

    @property
    def input_keys(self) -> list[str]:
        """Every batch key a condition is read from."""
        return [key for e in self.embedders.values() for key in e.input_keys]

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance applies: some condition has an unconditional value."""
        return any(e.guided for e in self.embedders.values())

    @property
    def text_key(self) -> str | None:
        """The batch key of the prompt, for a text-conditioned model (else None)."""
        return next((e.input_keys[0] for e in self.embedders.values() if e.takes_text), None)

    @property
    def label_heads(self) -> dict[str, int]:
        """``{batch key: class count}`` of every class-label condition (U-Net labels or class tokens), in order."""
        heads: dict[str, int] = {}
        for e in self.embedders.values():
            counts = getattr(e.encoder, "num_classes", None)
            if counts is not None:
                heads.update(zip(e.input_keys, counts, strict=True))
        return heads

    def read(self, batch: Mapping[str, Any], count: int | None = None) -> dict[str, Any]:
        """Each embedder's raw condition in ``batch``; with ``count`` (sampling) a condition the batch lacks is
        its unconditional value for ``count`` samples, and a key no embedder reads is an error."""
        if count is None:
            return {name: e.read(batch) for name, e in self.embedders.items()}
        unknown = sorted(set(batch) - set(self.input_keys))
        if unknown:
            raise ValueError(f"conditions {unknown} are not read by this model; it is conditioned on "
                             f"{self.input_keys or 'nothing'}")
        raw = {}
        for name, e in self.embedders.items():
            if all(key in batch for key in e.input_keys):
                raw[name] = e.read(batch)
            elif e.guided:
                raw[name] = e.encoder.unconditional(count)
            else:
                raise ValueError(f"this model is conditioned on {e.input_keys} maps: pass them in conditions")
        return raw

    def drop(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """``raw`` with each condition dropped to its unconditional value at its embedder's ``ucg_rate``."""
        return {name: self.embedders[name].drop(value) for name, value in raw.items()}

    def unconditional(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The guidance baseline of ``raw``: every condition at its unconditional value (spatial maps kept)."""
        return {name: self.embedders[name].unconditional(value) for name, value in raw.items()}

    def forward(self, raw: Mapping[str, Any]) -> dict[str, torch.Tensor | None]:
        """The U-Net keywords of raw conditions: ``context``/``context_mask``, ``y`` and ``concat``."""
        cond: dict[str, torch.Tensor | None] = {}
        for name, value in raw.items():
            cond.update(self.embedders[name](value))
        return cond
