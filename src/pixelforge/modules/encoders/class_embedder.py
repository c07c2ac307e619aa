"""Class-label conditioning as a one-token context, so class- and text-conditional diffusion share one U-Net path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from pixelforge.modules.embeddings import LabelEmbedding


class ClassEmbedder(nn.Module):
    """Labels (B,) or (B,K) -> (tokens (B,1,dim), None); label ``num_classes[i]`` is head i's null class.

    The mask is ``None`` because the single token is always real; several label heads (e.g. the four shapes
    attributes) are summed into that token.
    """

    output: ClassVar[str] = "context"  # feeds the U-Net's cross-attention (see pixelforge.conditioning)

    def __init__(self, num_classes: int | Sequence[int], dim: int = 128) -> None:
        super().__init__()
        self.dim = dim
        self.labels = LabelEmbedding([num_classes] if isinstance(num_classes, int) else num_classes, dim)

    @property
    def num_classes(self) -> tuple[int, ...]:
        """Class count of each label head."""
        return self.labels.num_classes

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Embed labels on this module's device into a single context token."""
        labels = torch.as_tensor(labels, device=self.labels.embeddings[0].weight.device)
        return self.labels(labels)[:, None], None

    def unconditional(self, batch_size: int) -> torch.Tensor:
        """The null condition for classifier-free guidance: null labels (on the CPU, moved in ``forward``)."""
        return self.labels.null_labels(batch_size)
