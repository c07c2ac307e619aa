"""A dataset whose items carry one more per-item tensor, computed once for the whole split (cached latents)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset


class WithField(Dataset):
    """``dataset``'s item ``i`` with ``values[i]`` added under ``key``; everything else passes through."""

    def __init__(self, dataset: Dataset, key: str, values: torch.Tensor) -> None:
        if len(values) != len(dataset):
            raise ValueError(f"{key!r} has {len(values)} rows for a dataset of {len(dataset)} items")
        self.dataset, self.key, self.values = dataset, key, values

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[i], self.key: self.values[i]}
