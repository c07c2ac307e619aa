"""Variational autoencoder: Gaussian posterior, Bernoulli or Gaussian decoder, beta-weighted KL with warm-up."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from pixelforge.models.autoencoder import difference_map
from pixelforge.modules.autoencoder import ConvAutoencoder
from pixelforge.optim import configure_optimizer

LIKELIHOODS = ("bernoulli", "gaussian")
LOG_2PI = math.log(2 * math.pi)


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``z = mean + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)``: a sample differentiable in mean and logvar."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(N(mean, diag exp(logvar)) || N(0, I)) in nats, summed over all but the first dim."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor | float = 0.0,
                      logvar: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per-sample log N(z; mean, diag exp(logvar)) in nats, summed over all but the first dim."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * (LOG_2PI + logvar + (z - mean).pow(2) / logvar.exp()).flatten(1).sum(1)


def bits_per_dim(nll: torch.Tensor, num_dims: int, log_bin_width: float = 0.0) -> torch.Tensor:
    """Nats per image -> bits per dimension; ``log_bin_width`` rescales a density to bins of width 1.

    A continuous density over data spaced ``delta`` apart (``log_bin_width = log(delta)``) becomes the
    probability of the bins ``delta`` wide: ``-log P ~ nll - num_dims * log(delta)``.
    """
    return (nll - num_dims * log_bin_width) / (num_dims * math.log(2))


def tile(t: torch.Tensor, m: int) -> torch.Tensor:
    """``m`` copies of batch ``t`` one after another: ``m*B,...``, so ``view(m, B)`` recovers the copies."""
    return t.repeat(m, *[1] * (t.dim() - 1))


class VAE(L.LightningModule):
    """VAE over images in [-1, 1] with ``loss = reconstruction + beta_t * KL`` per image, in nats.

    ``beta_t`` rises linearly from 0 to ``beta`` over ``kl_warmup_steps`` training steps (0: no warm-up);
    ``val/loss`` and ``test/loss`` always use the final ``beta`` so checkpoints compare across the warm-up.

    Likelihoods and what ``*/bpd`` measures:

    - ``bernoulli``: the decoder gives logits; the reconstruction term is the binary cross-entropy against
      the grey levels ``(x + 1) / 2`` in [0, 1], used as they are (not binarised), as is common for MNIST.
      This is not a normalised density over grey levels, so the bpd (``nll / (D ln 2)``, D = C*H*W) compares
      only with other models scored the same way. D counts pixels as served: mnist5k pads 28 -> 32, so
      D = 1024 (not 784) and its easy black border lowers the bpd against the literature's numbers.
    - ``gaussian``: the decoder gives means; one learned standard deviation (at least ``min_std``) is shared
      by all pixels. The density lives on the [-1, 1] scale, where 8-bit levels are ``2/255`` apart, so the
      bpd applies the dequantisation correction to the [0, 255] scale: ``(nll + D ln(127.5)) / (D ln 2)``
      (no dequantisation noise in training, so it approximates the 8-bit likelihood when the density is
      smooth over one level).

    ``*/nll_is`` is the importance-sampled ``-log p(x)`` with ``ll_samples`` posterior samples (in expectation
    an upper bound on the NLL, tighter than ``-elbo``, exact as ``ll_samples`` grows); ``*/bpd`` converts it.
    On validation only the first ``ll_val_images``
    images of the first batch get it, so validation stays cheap; test scores every image.
    """

    def __init__(
        self,
        net: ConvAutoencoder,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        likelihood: str = "bernoulli",
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        init_std: float = 0.1,
        min_std: float = 1 / 127.5,
        ll_samples: int = 64,
        ll_val_images: int = 16,
        num_traversals: int = 4,
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; valid: {list(LIKELIHOODS)}")
        if net.latent_moments != 2:
            raise ValueError(f"a VAE's net needs latent_moments=2 (mean and log-variance), got {net.latent_moments}")
        if beta < 0 or kl_warmup_steps < 0 or ll_samples < 1:
            raise ValueError(f"need beta >= 0, kl_warmup_steps >= 0 and ll_samples >= 1, got {beta}, "
                             f"{kl_warmup_steps}, {ll_samples}")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.likelihood = likelihood
        self.beta = beta
        self.kl_warmup_steps = kl_warmup_steps
        self.log_std = nn.Parameter(torch.tensor(math.log(init_std))) if likelihood == "gaussian" else None
        self.min_std = min_std
        self.ll_samples = ll_samples
        self.ll_val_images = ll_val_images
        self.num_traversals = num_traversals
        self.latent_shape: tuple[int, ...] = tuple(net.latent_shape)
        self.cond_keys: list[str] = []
        self.class_counts: list[int] = []

    # ---- model --------------------------------------------------------------------------------------------
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x), each ``B,*latent_shape``."""
        mean, logvar = self.net.encode(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)

    def nll(self, outputs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-image ``-log p(x | z)`` in nats from the decoder's ``outputs`` (logits or means), in float32."""
        outputs, x = outputs.float(), x.float()  # sums over thousands of pixels: no bf16 under autocast
        if self.log_std is None:
            return F.binary_cross_entropy_with_logits(outputs, (x + 1) / 2, reduction="none").flatten(1).sum(1)
        log_std = self.log_std.clamp(min=math.log(self.min_std))
        return -gaussian_log_prob(x, outputs, 2 * log_std)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean of images ``x`` in [-1, 1]: ``B,*latent_shape``."""
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from latents: the Bernoulli mean ``p`` as ``2p - 1``, or the clamped Gaussian mean."""
        outputs = self.net.decode(z)
        return 2 * torch.sigmoid(outputs) - 1 if self.log_std is None else outputs.clamp(-1, 1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode`` of the posterior mean of ``x``."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def sample(self, n: int | None = None, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images in [-1, 1] decoded from ``z ~ N(0, I)`` drawn with ``generator`` on the model's device."""
        if labels is not None:
            raise ValueError("this VAE is unconditional: call sample(n) without labels")
        if n is None or n < 1:
            raise ValueError(f"sample needs a number of images n >= 1, got {n}")
        return self.decode(torch.randn((n, *self.latent_shape), generator=generator, device=self.device))

    # ---- objectives ---------------------------------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-image ``elbo``, ``reconstruction`` (E_q[-log p(x|z)], one sample) and ``kl``, in nats."""
        mean, logvar = self.posterior(x)
        reconstruction = self.nll(self.net.decode(reparameterize(mean, logvar, generator)), x)
        kl = gaussian_kl(mean, logvar)
        return {"elbo": -(reconstruction + kl), "reconstruction": reconstruction, "kl": kl}

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                       max_decodes: int = 1024) -> torch.Tensor:
        """Per-image importance-sampled ``log p(x)`` in nats: ``logmeanexp_k [log p(x,z_k) - log q(z_k|x)]``.

        The ``k`` posterior samples are decoded in chunks of at most ``max_decodes`` images.
        """
        mean, logvar = self.posterior(x)
        chunk = max(1, max_decodes // len(x))
        log_weights = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            mu, lv, images = tile(mean, m), tile(logvar, m), tile(x, m)
            z = reparameterize(mu, lv, generator)
            log_w = -self.nll(self.net.decode(z), images) + gaussian_log_prob(z) - gaussian_log_prob(z, mu, lv)
            log_weights.append(log_w.view(m, len(x)))
        return torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(k)

    def bits_per_dim(self, nll: torch.Tensor, image_shape: tuple[int, ...]) -> torch.Tensor:
        """Nats per image -> bits per dimension, on the scale the class docstring describes per likelihood."""
        log_bin_width = 0.0 if self.log_std is None else math.log(2 / 255)
        return bits_per_dim(nll, math.prod(image_shape), log_bin_width)

    def kl_weight(self, step: int) -> float:
        """The KL weight at training step ``step``: linear warm-up from 0 to ``beta`` over ``kl_warmup_steps``."""
        if self.kl_warmup_steps == 0:
            return self.beta
        return self.beta * min(1.0, step / self.kl_warmup_steps)

    # ---- training -----------------------------------------------------------------------------------------
    def shared_step(self, batch: Mapping[str, Any], batch_idx: int, split: str) -> torch.Tensor:
        x = batch["image"]
        terms = self.elbo_terms(x)
        beta = self.kl_weight(self.global_step) if split == "train" else self.beta
        loss = (terms["reconstruction"] + beta * terms["kl"]).mean()
        log = {f"{split}/loss": loss, f"{split}/elbo": terms["elbo"].mean(), f"{split}/kl": terms["kl"].mean(),
               f"{split}/rec": terms["reconstruction"].mean()}
        if split == "train":
            log["train/beta"] = beta
            if self.log_std is not None:
                log["train/decoder_std"] = self.log_std.detach().exp()
        on_step = split == "train"
        self.log_dict(log, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=not on_step)
        if split == "test" or (split == "val" and batch_idx == 0):
            images = x if split == "test" else x[: self.ll_val_images]
            generator = torch.Generator(x.device).manual_seed(batch_idx)
            nll = -self.log_likelihood(images, self.ll_samples, generator)
            self.log_dict({f"{split}/nll_is": nll.mean(), f"{split}/bpd": self.bits_per_dim(nll, x.shape[1:]).mean()},
                          on_epoch=True, batch_size=len(images), sync_dist=True)
        return loss

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, batch_idx, "train")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.shared_step(batch, batch_idx, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.shared_step(batch, batch_idx, "test")

    def configure_optimizers(self) -> dict:
        return configure_optimizer(self.parameters(), self.optimizer, self.scheduler,
                                   self.trainer.estimated_stepping_batches)

    # ---- images -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], max_images: int = 16, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Inputs, reconstructions, |x - x_hat|, prior samples, an interpolation row and latent traversal rows.

        Traversals vary, around the first image's posterior mean, the latent dimensions with the largest
        mean KL on this batch (the ones the model uses most), from -3 to 3.
        """
        x = batch["image"][:max_images]
        mean, logvar = self.posterior(x)
        reconstructions = self.decode(mean)
        images = {"inputs": x, "reconstructions": reconstructions,
                  "differences": difference_map(x, reconstructions),
                  "samples": self.sample(len(x), generator=torch.Generator(self.device).manual_seed(0))}
        steps = torch.linspace(0, 1, 8, device=self.device).view(-1, *[1] * len(self.latent_shape))
        if len(x) > 1:
            images["interpolation_row"] = self.decode(torch.lerp(mean[:1], mean[1:2], steps))
        flat = mean[:1].flatten(1)
        kl_per_dim = gaussian_kl(mean.flatten(1).T, logvar.flatten(1).T)  # summed over the batch
        for rank, dim in enumerate(kl_per_dim.argsort(descending=True)[: self.num_traversals].tolist()):
            z = flat.repeat(8, 1)
            z[:, dim] = torch.linspace(-3, 3, 8, device=self.device)
            images[f"traversal{rank}_row"] = self.decode(z.view(8, *self.latent_shape))
        return images
