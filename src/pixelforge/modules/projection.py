"""SimCLR's projection head: the contrastive loss is taken on ``g(h)``, not on the backbone's features ``h``, which
keep what the loss would teach them to forget (colour, orientation) for the tasks downstream."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """``layers`` linear layers ``in_features -> hidden_dim -> ... -> out_dim`` with batch norm and ReLU between."""

    def __init__(self, in_features: int, hidden_dim: int = 512, out_dim: int = 128, layers: int = 2) -> None:
        if layers < 1:
            raise ValueError(f"a projection head needs layers >= 1, got {layers}")
        widths = [in_features] + [hidden_dim] * (layers - 1)
        blocks: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            blocks += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        super().__init__(*blocks, nn.Linear(widths[-1], out_dim))
        self.out_features = out_dim
