"""Contrastive learning's pure parts: the losses over the global batch, kNN and linear-probe evaluation, zero-shot
classification and retrieval."""
