"""Vector-quantised first stage (CompVis/taming ``VQModel``): latents snapped to a learned codebook."""

from __future__ import annotations

from typing import Any

import torch

from pixelforge.models.first_stage import FirstStageModel
from pixelforge.modules.quantize import VectorQuantizer


class VQModel(FirstStageModel):
    """First stage whose latents are quantised to ``n_embed`` codes of width ``embed_dim`` before decoding.

    The VQ loss (codebook + ``beta`` commitment, or commitment alone with ``ema_decay``) joins the reconstruction
    loss unweighted, as in taming-transformers. Codebook ``usage`` and ``perplexity`` are logged per batch;
    ``dead_threshold`` restarts rarely used codes (see ``VectorQuantizer``).
    """

    def __init__(self, n_embed: int = 256, beta: float = 0.25, ema_decay: float | None = None,
                 dead_threshold: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.quantizer = VectorQuantizer(n_embed, self.embed_dim, beta=beta, ema_decay=ema_decay,
                                         dead_threshold=dead_threshold)

    def encode_latent(self, x: torch.Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """The pre-quantisation latent (what LDM diffuses for VQ models); ``sample`` and ``generator`` are unused."""
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from latents, quantised first (CompVis ``decode`` with ``force_not_quantize=False``)."""
        return self.decoder_output(self.quantizer.quantize(z)[0]).clamp(-1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction from the straight-through quantised latent, the VQ loss, codebook usage and perplexity."""
        quantized, loss, info = self.quantizer(self.encode_latent(x))
        return self.decoder_output(quantized), loss, {"perplexity": info["perplexity"], "usage": info["usage"]}

    def random_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` latents of uniformly random codes (an untrained prior: expect texture, not images)."""
        indices = torch.randint(self.quantizer.num_codes, (n, *self.latent_shape[1:]), generator=generator,
                                device=self.device)
        return self.quantizer.lookup(indices)
