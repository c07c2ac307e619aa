"""The kNN monitor of self-supervised training (Wu et al. 2018): classify frozen features by a temperature-weighted
vote of their k nearest training features under cosine similarity; it needs no training, so it cannot overfit."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Predicted labels ``Q`` of ``queries`` ``Q,D`` from the ``bank`` ``N,D`` with ``bank_labels`` ``N``: each of
    the k most similar bank entries votes ``exp(cos / temperature)`` for its label."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    queries, bank = F.normalize(queries.float(), dim=1), F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    predictions = []
    for start in range(0, len(queries), chunk):  # Q x N similarities a chunk at a time
        similarity, index = (queries[start:start + chunk] @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(index), num_classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[index], (similarity / temperature).exp())
        predictions.append(votes.argmax(1))
    return torch.cat(predictions)
