"""Sampler base: validates its settings, picks the timesteps and runs the denoising loop over a denoiser."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from pixelforge.diffusion.schedule import NoiseSchedule, check_prediction_type, eps_from_prediction, x0_from_prediction


class Denoiser(Protocol):
    """``model(x_t, t, cond)``: the network's prediction (of the sampler's prediction_type) at long timesteps t (B,)."""

    def __call__(self, x: Tensor, t: Tensor, cond: Any) -> Tensor: ...


StepCallback = Callable[[int, Tensor, Tensor], None]


SPACINGS = ("trailing", "leading", "linspace")  # how the visited timesteps are chosen (diffusers' timestep_spacing)


class Sampler(ABC):
    """Reverse-process loop shared by all samplers; a subclass implements one update in ``step``.

    ``timestep_spacing`` picks the ``steps`` timesteps visited, as diffusers' schedulers do: ``trailing`` (the
    default, Lin et al. 2023) starts at T - 1, so the first model call sees the noise level the initial noise has;
    ``leading`` visits ``i·(T // steps) + steps_offset`` (CompVis's DDIM and PLMS with offset 1: 981, 961, ..., 1
    for 50 steps); ``linspace`` rounds ``linspace(0, T - 1, steps)``. After the last one the sampler lands on
    alpha_bar = 1 (clean data), or on the schedule's first alpha_bar with ``set_alpha_to_one=False`` (Stable
    Diffusion's setting). The initial noise is the caller's (fixed noise -> reproducible samples); stochastic
    samplers draw their extra noise from ``generator``, which must live on the noise's device (None: torch's global
    RNG). ``clip_x0`` clamps each x0 estimate to [-clip_x0, clip_x0] and re-derives eps from it (OpenAI's
    ``clip_denoised``): pixel models whose data lie in [-1, 1] use 1.0, so an out-of-range estimate early in an
    ODE trajectory does not end as speckle; latent models leave it None.
    """

    def __init__(self, schedule: NoiseSchedule, prediction_type: str = "eps", steps: int | None = None,
                 clip_x0: float | None = None, timestep_spacing: str = "trailing", steps_offset: int = 0,
                 set_alpha_to_one: bool = True) -> None:
        check_prediction_type(prediction_type)
        num_timesteps = schedule.num_timesteps
        steps = num_timesteps if steps is None else steps
        if not 1 <= steps <= num_timesteps:
            raise ValueError(f"steps={steps} must be between 1 and the schedule's num_timesteps={num_timesteps}")
        if prediction_type == "eps" and bool(schedule.alphas_cumprod[-1] == 0):
            raise ValueError("prediction_type='eps' cannot be sampled on a zero-terminal-SNR schedule: x0 is "
                             "undefined from eps where alpha_bar = 0; train with 'v' or 'x0' instead")
        if timestep_spacing not in SPACINGS:
            raise ValueError(f"unknown timestep_spacing {timestep_spacing!r}; valid: {', '.join(SPACINGS)}")
        if timestep_spacing == "leading" and not 0 <= steps_offset < num_timesteps // steps:
            raise ValueError(f"steps_offset={steps_offset} must be in [0, {num_timesteps // steps}) for {steps} "
                             f"leading steps of {num_timesteps}")
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.steps = steps
        self.clip_x0 = clip_x0
        self.timestep_spacing = timestep_spacing
        self.steps_offset = steps_offset
        self.set_alpha_to_one = set_alpha_to_one

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in vars(self).items() if key != "schedule")
        return f"{type(self).__name__}({settings})"

    def timesteps(self) -> Tensor:
        """The discrete timesteps visited, descending (see ``timestep_spacing``); trailing is
        T - 1 - floor(i·T / steps) for i < steps."""
        num_timesteps = self.schedule.num_timesteps
        if self.timestep_spacing == "leading":
            return (torch.arange(self.steps) * (num_timesteps // self.steps)).flip(0) + self.steps_offset
        if self.timestep_spacing == "linspace":
            return torch.linspace(0, num_timesteps - 1, self.steps, dtype=torch.float64).round().long().flip(0)
        return num_timesteps - 1 - torch.arange(self.steps) * num_timesteps // self.steps

    def alphas_cumprod(self, timesteps: Tensor) -> Tensor:
        """alpha_bar at each visited step, then at what the last step lands on (1, or the schedule's first)."""
        alphas_cumprod = self.schedule.alphas_cumprod.to(timesteps.device)
        final = alphas_cumprod.new_ones(1) if self.set_alpha_to_one else alphas_cumprod[:1]
        return torch.cat([alphas_cumprod[timesteps], final])

    def reset(self) -> None:  # noqa: B027 (a hook: most samplers keep nothing between calls)
        """Forget what an earlier ``sample`` call left behind (multistep samplers keep a history)."""

    def estimate(self, predict: Callable[[Tensor, int], tuple[Tensor, Tensor]], i: int, x: Tensor,
                 abar: Tensor) -> tuple[Tensor, Tensor]:
        """(x0, eps) that step ``i`` uses; ``predict(x, i)`` is the network's (x0, eps) at step ``i``'s noise
        level. One network call; PLMS overrides it to combine calls."""
        return predict(x, i)

    @torch.no_grad()
    def sample(
        self,
        model: Denoiser,
        noise: Tensor,
        cond: Any = None,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
        progress: bool = False,
        start: int = 0,
        known: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Denoise ``noise`` (x_T) to x_0; ``callback(i, x_t, x0_pred)`` sees each step's input and its x0 estimate.

        ``start`` > 0 skips the first steps: ``noise`` is then x at ``timesteps()[start]`` (img2img, SDEdit).
        With ``known`` clean data and ``mask`` (1 = keep ``known``), the kept region is replaced after every step
        by ``known`` diffused to that step's noise level (inpainting by blending, as CompVis's samplers do).
        """
        if not 0 <= start < self.steps:
            raise ValueError(f"start={start} must be in [0, {self.steps}) for {self.steps} steps")
        if (known is None) != (mask is None):
            raise ValueError("inpainting needs both known and mask (1 = keep known), or neither")
        timesteps = self.timesteps().to(noise.device)
        abar = self.alphas_cumprod(timesteps)

        def predict(x: Tensor, i: int) -> tuple[Tensor, Tensor]:
            alpha, sigma = abar[i].sqrt(), (1 - abar[i]).sqrt()
            pred = model(x, timesteps[i].expand(len(x)), cond)
            x0 = x0_from_prediction(pred, x, alpha, sigma, self.prediction_type)
            if self.clip_x0 is None:
                return x0, eps_from_prediction(pred, x, alpha, sigma, self.prediction_type)
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            return x0, (x - alpha * x0) / sigma

        self.reset()
        x, prev_x0 = noise, None
        for i in tqdm(range(start, self.steps), desc=type(self).__name__, disable=not progress, leave=False):
            x0, eps = self.estimate(predict, i, x, abar)
            if callback is not None:
                callback(i, x, x0)
            x = self.step(i, x, x0, eps, abar, prev_x0, generator)
            if known is not None:
                x = torch.lerp(x, self.diffuse(known, abar[i + 1], generator), mask)
            prev_x0 = x0
        return x

    @staticmethod
    def diffuse(x0: Tensor, abar: Tensor, generator: torch.Generator | None) -> Tensor:
        """Sample q(x_t | x0) at the noise level ``abar`` (alpha_bar_t) with noise drawn from ``generator``."""
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def start_index(self, strength: float) -> int:
        """The step img2img starts from: ``strength`` 1 re-noises fully (step 0), small values keep the input."""
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        return self.steps - max(1, round(strength * self.steps))

    @abstractmethod
    def step(
        self, i: int, x: Tensor, x0: Tensor, eps: Tensor, abar: Tensor, prev_x0: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        """x at step i + 1 (alpha_bar abar[i + 1]) from x at step i, its x0 / eps estimates and step i - 1's x0."""

    def add_noise(self, i: int, x: Tensor, std: Tensor, generator: torch.Generator | None) -> Tensor:
        """x + std·z with z ~ N(0, I) from ``generator``; the last step lands on clean data and draws none."""
        if i == self.steps - 1:
            return x
        return x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
