"""One condition of a diffusion model: where it is read from, how often it is dropped, and what it becomes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

OUTPUTS = ("context", "y", "concat")  # the U-Net inputs an encoder can feed (its ``output`` attribute)


class Embedder(nn.Module):
    """``batch[input_key]`` through ``encoder`` into the U-Net input its ``output`` names.

    ``context`` encoders (text encoders, ClassEmbedder) return ``(tokens, mask)``, which become ``context`` and
    ``context_mask``; ``y`` and ``concat`` encoders return one tensor. Several input keys are stacked into ``B,K``
    labels (the shapes' four attributes). During training each sample's condition is replaced by the encoder's
    ``unconditional`` value (empty prompt, null class) with probability ``ucg_rate``, so classifier-free guidance
    works; an encoder without one (a spatial map) is never dropped.
    """

    def __init__(self, encoder: nn.Module, input_key: str | Sequence[str], ucg_rate: float = 0.0) -> None:
        super().__init__()
        output = getattr(encoder, "output", None)
        if output not in OUTPUTS:
            raise ValueError(f"{type(encoder).__name__} cannot condition a U-Net: its output attribute is "
                             f"{output!r}, not one of {OUTPUTS}")
        if not 0.0 <= ucg_rate <= 1.0:
            raise ValueError(f"ucg_rate must be a probability in [0, 1], got {ucg_rate}")
        if ucg_rate > 0 and not hasattr(encoder, "unconditional"):
            raise ValueError(f"ucg_rate={ucg_rate}: {type(encoder).__name__} has no unconditional value to drop "
                             "to; use ucg_rate 0")
        self.input_keys = [input_key] if isinstance(input_key, str) else list(input_key)
        heads = getattr(encoder, "num_classes", None)
        if len(self.input_keys) > 1 and (heads is None or len(heads) != len(self.input_keys)):
            raise ValueError(f"input_key {self.input_keys} stacks {len(self.input_keys)} label keys; the encoder "
                             f"needs as many class heads, it has num_classes={heads}")
        self.encoder = encoder
        self.output = output
        self.ucg_rate = ucg_rate

    @property
    def guided(self) -> bool:
        """Whether the condition has an unconditional value, so guidance can push away from it."""
        return hasattr(self.encoder, "unconditional")

    @property
    def takes_text(self) -> bool:
        """Whether the condition is a prompt (its unconditional value is the empty prompt)."""
        return self.guided and isinstance(self.encoder.unconditional(1), list)

    def read(self, batch: Mapping[str, Any]) -> Any:
        """This condition's raw value in ``batch``: the key's value, or ``B,K`` labels of several keys."""
        missing = [key for key in self.input_keys if key not in batch]
        if missing:
            raise KeyError(f"the condition needs the batch key(s) {missing}; the batch has {sorted(batch)}")
        if len(self.input_keys) == 1:
            return batch[self.input_keys[0]]
        return torch.stack([torch.as_tensor(batch[key]) for key in self.input_keys], dim=1)

    def unconditional(self, raw: Any) -> Any:
        """The unconditional value for as many samples as ``raw`` has (``raw`` itself when there is none)."""
        return self.encoder.unconditional(len(raw)) if self.guided else raw

    def drop(self, raw: Any) -> Any:
        """Replace each sample's raw condition by the unconditional one with probability ``ucg_rate``."""
        if self.ucg_rate <= 0:
            return raw
        drop = (torch.rand(len(raw)) < self.ucg_rate).tolist()
        null = self.unconditional(raw)
        if isinstance(raw, torch.Tensor):
            mask = torch.tensor(drop, device=raw.device).view(-1, *([1] * (raw.dim() - 1)))
            return torch.where(mask, null.to(raw.device), raw)
        return [n if d else r for r, n, d in zip(raw, null, drop, strict=True)]

    def forward(self, raw: Any) -> dict[str, torch.Tensor | None]:
        """The U-Net keywords for a raw condition."""
        if self.output == "context":
            tokens, mask = self.encoder(raw)
            return {"context": tokens, "context_mask": mask}
        return {self.output: self.encoder(raw)}
