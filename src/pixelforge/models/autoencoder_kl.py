"""KL-regularised autoencoder (CompVis ``AutoencoderKL``): a diagonal-Gaussian posterior over spatial latents."""

from __future__ import annotations

from typing import Any

import torch

from pixelforge.models.first_stage import FirstStageModel
from pixelforge.modules.distributions import DiagonalGaussian


class AutoencoderKL(FirstStageModel):
    """First stage with ``q(z|x) = N(mean, diag var)`` and a light KL pull towards N(0, I).

    The KL term is ``kl_weight * KL / D`` with D = C*H*W of an image: CompVis's weighting of a per-image
    summed KL against a per-image summed L1, put on this model's per-pixel mean scale, so its ``kl_weight``
    values (1e-6 in Stable Diffusion) carry over. Training decodes a posterior sample; evaluation the mode.
    """

    double_z = True

    def __init__(self, kl_weight: float = 1e-6, **kwargs: Any) -> None:
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        super().__init__(**kwargs)
        self.kl_weight = kl_weight

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """The posterior ``q(z | x)`` of images ``x`` in [-1, 1] over ``B,embed_dim,h,w`` latents."""
        return DiagonalGaussian.from_moments(self.quant_conv(self.encoder(x)))

    def encode_latent(self, x: torch.Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """The posterior mode, or with ``sample`` a posterior sample drawn with ``generator``."""
        posterior = self.encode(x)
        return posterior.sample(generator) if sample else posterior.mode()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from latents ``B,embed_dim,h,w``."""
        return self.decoder_output(z).clamp(-1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction of a posterior sample (the mode in eval mode), weighted KL, and the KL per image."""
        posterior = self.encode(x)
        z = posterior.sample() if self.training else posterior.mode()
        kl = posterior.kl().mean()
        return self.decoder_output(z), self.kl_weight * kl / x[0].numel(), {"kl": kl}

    def random_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` latents from N(0, I), the prior the KL term pulls towards (loosely, at small ``kl_weight``)."""
        return torch.randn((n, *self.latent_shape), generator=generator, device=self.device)
