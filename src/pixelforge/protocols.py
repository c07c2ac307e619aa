"""The model families, named in one place: scripts and metrics ask a loaded model what it can do with
``isinstance(model, Generates)`` instead of probing its attributes or its method signatures."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Generates(Protocol):
    """Draws new images, ``B,C,H,W`` in [-1, 1]: a GAN, a VAE's prior, a DDPM or an LDM."""

    def sample(self, n: int | None = None, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, **kwargs: Any) -> torch.Tensor: ...


@runtime_checkable
class Diffuses(Generates, Protocol):
    """A diffusion model: its ``sample`` takes ``sampler``, ``steps``, ``scale`` and ``guidance_rescale`` (guidance)
    and ``eta``."""

    schedule: Any


@runtime_checkable
class KeepsEMA(Protocol):
    """Keeps an EMA copy of its weights (``ema``, None when off); its ``sample`` takes ``use_ema``."""

    ema: Any


@runtime_checkable
class Reconstructs(Protocol):
    """Reconstructs images through a latent it decodes: an autoencoder, a VAE or a first stage (KL, VQ)."""

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Encodes(Reconstructs, Protocol):
    """Also maps an image to its latent with ``encode``: an autoencoder, a VAE, a KL first stage."""

    def encode(self, x: torch.Tensor) -> Any: ...


@runtime_checkable
class Classifies(Protocol):
    """Predicts labels through ``heads`` on its penultimate ``features``: an image classifier."""

    heads: Any

    def features(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ScoresLikelihood(Protocol):
    """Gives each image's log-likelihood (bound): a VAE."""

    def log_likelihood(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor: ...


@runtime_checkable
class Embeds(Protocol):
    """Maps images to features for downstream tasks with ``embed``: a self-supervised or contrastive model."""

    def embed(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class AlignsText(Embeds, Protocol):
    """Embeds images and texts in one space (``encode_image``, ``encode_text``: unit vectors): a CLIP."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, texts: Any) -> torch.Tensor: ...
