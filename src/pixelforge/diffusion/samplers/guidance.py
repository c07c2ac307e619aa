"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper that batches both passes into one call."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pixelforge.diffusion.samplers.base import Denoiser


def concat_cond(first: Any, second: Any) -> Any:
    """Two conditionings joined along the batch: tensors concatenated, dicts per key, lists joined, None kept."""
    if first is None and second is None:
        return None
    if isinstance(first, Tensor) and isinstance(second, Tensor):
        return torch.cat([first, second])
    if isinstance(first, dict) and isinstance(second, dict):
        return {key: concat_cond(first[key], second[key]) for key in first}
    if isinstance(first, list | tuple) and isinstance(second, list | tuple):
        return [*first, *second]
    raise TypeError(f"cannot batch conditionings of types {type(first).__name__} and {type(second).__name__}")


class ClassifierFreeGuidance:
    """Denoiser returning uncond + scale·(cond - uncond) of the wrapped model's predictions.

    Guidance is applied to the raw prediction whatever its type: eps, x0 and v are affine in one another at fixed
    (x_t, t), so guiding any of them is the same linear extrapolation and gives the same guided x0 and eps.
    ``uncond`` is the null conditioning for the whole batch (same batch size as ``cond``); at scale 1 the model
    runs once on ``cond`` alone, otherwise once on the doubled batch [uncond; cond].

    ``rescale`` (phi, Lin et al. 2023, section 3.4) pulls each guided prediction's standard deviation back towards
    the conditional one's: phi·guided·std(cond)/std(guided) + (1 - phi)·guided. A large scale inflates the guided
    prediction, which with zero terminal SNR overexposes; the paper uses 0.7. As in diffusers, the raw prediction
    (eps, x0 or v) is rescaled, so here the prediction type matters.
    """

    def __init__(self, model: Denoiser, scale: float, uncond: Any, rescale: float = 0.0) -> None:
        if not 0 <= rescale <= 1:
            raise ValueError(f"guidance rescale must lie in [0, 1] (0: plain guidance, 0.7: Lin et al.), got {rescale}")
        self.model = model
        self.scale = scale
        self.uncond = uncond
        self.rescale = rescale

    def __call__(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        if self.scale == 1:
            return self.model(x, t, cond)
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), concat_cond(self.uncond, cond))
        uncond_pred, cond_pred = both.chunk(2)
        guided = uncond_pred + self.scale * (cond_pred - uncond_pred)
        if self.rescale == 0:
            return guided
        dims = tuple(range(1, guided.ndim))
        rescaled = guided * (cond_pred.std(dims, keepdim=True) / guided.std(dims, keepdim=True))
        return torch.lerp(guided, rescaled, self.rescale)
