"""PLMS, pseudo linear multistep (Liu et al. 2022, PNDM): CompVis's ``--plms``, Stable Diffusion's default sampler."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pixelforge.diffusion.samplers.base import Sampler

# Adams-Bashforth weights of the current and the 1, 2, 3 previous eps estimates, by how many previous there are
ADAMS_BASHFORTH = {1: (3 / 2, -1 / 2), 2: (23 / 12, -16 / 12, 5 / 12), 3: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


class PLMSSampler(Sampler):
    """DDIM (eta = 0) steps with eps extrapolated from the last four network calls (linear multistep).

    The first step has no history: it takes a DDIM step, calls the network again where that lands and steps again
    from the start with the mean of both eps (a pseudo improved Euler step, two calls); later steps combine the
    current eps with up to three earlier ones by Adams-Bashforth weights. This is CompVis's ``p_sample_plms`` and
    diffusers' ``PNDMScheduler(skip_prk_steps=True)``. The history is of eps whatever the model predicts: for
    v-prediction diffusers combines the raw v outputs instead, which is not the same extrapolation.
    """

    def reset(self) -> None:
        self.history: list[Tensor] = []

    def estimate(self, predict: Callable[[Tensor, int], tuple[Tensor, Tensor]], i: int, x: Tensor,
                 abar: Tensor) -> tuple[Tensor, Tensor]:
        x0, eps = predict(x, i)
        combined_x0 = x0
        if self.history:
            weights = ADAMS_BASHFORTH[min(len(self.history), 3)]
            combined = weights[0] * eps + sum(w * e for w, e in zip(weights[1:], reversed(self.history), strict=False))
        elif i < self.steps - 1:
            x0_next, eps_next = predict(self.step(i, x, x0, eps, abar, None, None), i + 1)
            combined, combined_x0 = (eps + eps_next) / 2, (x0 + x0_next) / 2
        else:  # a single step: plain DDIM, as diffusers does (CompVis would call the network again at this t)
            combined = eps
        self.history = [*self.history[-2:], eps]
        alpha, sigma = abar[i].sqrt(), (1 - abar[i]).sqrt()
        # at alpha_bar = 0 (zero terminal SNR) x_t is pure noise and eps says nothing of x0: average the x0s there
        pure_noise = abar[i] == 0
        x0 = torch.where(pure_noise, combined_x0, (x - sigma * combined) / alpha)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            return x0, (x - alpha * x0) / sigma
        return x0, torch.where(pure_noise, x, combined)

    def step(
        self, i: int, x: Tensor, x0: Tensor, eps: Tensor, abar: Tensor, prev_x0: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        return abar[i + 1].sqrt() * x0 + (1 - abar[i + 1]).sqrt() * eps
