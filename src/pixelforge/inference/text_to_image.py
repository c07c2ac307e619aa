"""Text to image (and image to image) with a trained text-conditioned latent diffusion run: what ``txt2img.py``
and ``img2img.py`` do, as functions a notebook can call. Every bad input raises InferenceError; nothing exits.

    from pixelforge.inference import load_text_model, text_to_image
    model = load_text_model("logs/<ldm run>")
    images = text_to_image(model, ["a large red circle in the center"] * 4, steps=20, scale=5.0)   # B,C,H,W in [-1, 1]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor
from tqdm import tqdm

from pixelforge.inference.devices import autocast, best_device
from pixelforge.inference.writer import SampleWriter
from pixelforge.interop import stable_diffusion
from pixelforge.interop.diffusers_folder import is_diffusers_folder
from pixelforge.models.diffusion import DiffusionModel, ImageInit
from pixelforge.runs import load_run


class InferenceError(ValueError):
    """An input that sampling cannot use: the message names it and what would be valid."""


SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors")


def is_single_file(ckpt: str | Path, config: str | Path | None = None) -> bool:
    """Whether ``ckpt`` is a Stable Diffusion single file rather than a pixelforge run (or a checkpoint in one):
    a ``.ckpt`` / ``.safetensors`` file with no run config beside it and none given."""
    path = Path(ckpt)
    if config is not None or not path.is_file() or path.suffix not in SINGLE_FILE_SUFFIXES:
        return False
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return not (run_dir / "configs" / "config.yaml").is_file()


def load_text_model(ckpt: str | Path, config: str | Path | None = None, device: str | torch.device | None = None,
                    channels: int | None = None, factor: int | None = None, sd_version: str | None = None,
                    use_ema: bool = True, unsafe: bool = False, dtype: torch.dtype | None = None) -> DiffusionModel:
    """The text-conditioned run at ``ckpt`` on ``device`` (default: the best here), or a Stable Diffusion single
    file or diffusers folder (of ``sd_version`` or the one it says; ``use_ema`` picks its EMA weights, ``unsafe``
    allows a full pickle), checked to have the latent ``channels`` and first-stage ``factor`` given (CompVis's
    ``--C`` and ``--f``; None: the model's). ``dtype`` (fp16/bf16) keeps the weights in it; a Stable Diffusion
    file is read straight into it, so the weights are never held in float32."""
    try:
        if is_single_file(ckpt, config) or is_diffusers_folder(ckpt):
            model = stable_diffusion.load(ckpt, sd_version, use_ema=use_ema, unsafe=unsafe,
                                          dtype=dtype or torch.float32)
        else:
            _, model = load_run(ckpt, config)
            if dtype is not None:
                model.weights_to(dtype)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise InferenceError(str(error).strip("'\"")) from None
    if not (isinstance(model, DiffusionModel) and model.text_conditioned):
        raise InferenceError(f"{ckpt} holds a {type(model).__name__}, not a text-conditioned model (a "
                             "DiffusionModel whose conditioner has a text embedder)")
    for flag, given, actual in (("--C", channels, model.channels), ("--f", factor, model.downsample_factor)):
        if given is not None and given != actual:
            raise InferenceError(f"{flag} {given} does not match the model, whose value is {actual}; leave {flag} out")
    return model.to(torch.device(device) if device else best_device())


def guidance_defaults(model: Any) -> tuple[float, float]:
    """(scale, rescale) that the scripts sample at where ``--scale`` / ``--guidance_rescale`` are left out: a guided
    model's ``log_guidance_scale`` and ``log_guidance_rescale``, which its image logs use; else (1, 0)."""
    if not getattr(getattr(model, "conditioner", None), "guided", False):
        return 1.0, 0.0
    return model.log_guidance_scale, model.log_guidance_rescale


def default_options(model: DiffusionModel) -> dict[str, Any]:
    """The model's own sampling settings, which the scripts use for the flags a user leaves out: its image
    logger's step count, guidance scale and rescale (Stable Diffusion: CompVis's 50 steps at scale 7.5)."""
    scale, rescale = guidance_defaults(model)
    return {"steps": model.log_sampler.get("steps") or 20, "scale": scale, "guidance_rescale": rescale}


def output_size(model: DiffusionModel, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """(H, W) in pixels: the given sizes or the model's image size, checked against its downsampling factors."""
    height = model.image_size if height is None else height
    width = model.image_size if width is None else width
    try:
        model.sample_shape(1, height, width)
    except ValueError as error:
        raise InferenceError(f"--H/--W: {error}") from None
    return height, width


def read_prompts(path: str | Path) -> list[str]:
    """The non-empty lines of a prompt file (CompVis's ``--from-file``)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InferenceError(f"--from-file {path}: {error}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise InferenceError(f"--from-file {path} holds no prompts; write one prompt a line")
    return prompts


def load_image(path: str | Path, height: int, width: int, mode: str) -> torch.Tensor:
    """The image at ``path`` in PIL ``mode`` ("RGB" or "L") resized to ``height`` x ``width``: 1,C,H,W in [0, 1]."""
    try:
        with Image.open(path) as image:
            image = image.convert(mode).resize((width, height), Image.Resampling.LANCZOS)
    except (OSError, ValueError) as error:  # missing file, or data PIL cannot decode
        raise InferenceError(f"cannot read image {str(path)!r}: {error}") from None
    return pil_to_tensor(image)[None].float() / 255


def sampler_options(sampler: str = "dpmpp", steps: int = 20, scale: float = 5.0, eta: float = 0.0,
                    use_ema: bool = True, guidance_rescale: float = 0.0) -> dict[str, Any]:
    """``DiffusionModel.sample`` keywords; ``eta`` belongs to DDIM and must stay 0 for the other samplers."""
    options = {"sampler": sampler, "steps": steps, "scale": scale, "use_ema": use_ema,
               "guidance_rescale": guidance_rescale}
    if sampler == "ddim":
        options["eta"] = eta
    elif eta != 0:
        raise InferenceError(f"--ddim_eta {eta} applies to the DDIM sampler only, not {sampler}; pass --sampler ddim")
    return options


@torch.no_grad()
def text_to_image(model: DiffusionModel, prompts: Sequence[str], *, height: int | None = None,
                  width: int | None = None, generator: torch.Generator | None = None,
                  latents: torch.Tensor | None = None, precision: str = "full", init: ImageInit | None = None,
                  **options: Any) -> torch.Tensor:
    """One image per prompt, ``B,C,H,W`` in [-1, 1]; ``options`` as ``sampler_options`` (default DPM-Solver++,
    20 steps, guidance 5). ``latents`` are the initial noise (``B,C,h,w``; default: drawn from ``generator``), so a
    result can be compared with another implementation started from the same latents. With ``init`` (one image,
    its strength, optionally a keep mask) it is image to image."""
    height, width = output_size(model, height, width)
    options = sampler_options(**options)
    dtype = next(model.unet.parameters()).dtype
    if precision == "full" and dtype != torch.float32:
        raise InferenceError(f"the model's weights are {dtype}: sample them with precision 'autocast' or 'half'")
    if init is not None:  # one init image (and mask) for every prompt
        images, mask = (None if x is None else x.to(model.device).expand(len(prompts), -1, -1, -1)
                        for x in (init.images, init.keep_mask))
        init = ImageInit(images, init.strength, mask)
    with autocast(model.device, precision):
        try:
            return model.sample(conditions={model.conditioner.text_key: list(prompts)}, noise=latents,
                                generator=generator, size=(height, width), init=init, **options).float()
        except ValueError as error:  # settings the model refuses, e.g. more steps than its schedule has
            raise InferenceError(str(error)) from None


def image_to_image(model: DiffusionModel, prompts: Sequence[str], init_image: str | Path | torch.Tensor,
                   strength: float = 0.75, mask: str | Path | torch.Tensor | None = None,
                   **kwargs: Any) -> torch.Tensor:
    """``text_to_image`` from ``init_image`` (a file, or ``1,C,H,W`` in [-1, 1]) re-noised to ``strength`` in
    (0, 1]; a ``mask`` (a file, or ``1,1,H,W`` in [0, 1]) repaints where it is white (1) and keeps the init image
    where it is black (0)."""
    if not 0 < strength <= 1:
        raise InferenceError(f"--strength {strength} must be in (0, 1] (1 replaces the init image entirely)")
    height, width = output_size(model, kwargs.pop("height", None), kwargs.pop("width", None))
    if not isinstance(init_image, torch.Tensor):
        mode = "L" if model.first_stage.in_channels == 1 else "RGB"
        init_image = load_image(init_image, height, width, mode) * 2 - 1
    if mask is not None and not isinstance(mask, torch.Tensor):
        mask = load_image(mask, height, width, "L")
    init = ImageInit(init_image, strength, None if mask is None else 1 - mask)
    return text_to_image(model, prompts, height=height, width=width, init=init, **kwargs)


def sample_batches(model: DiffusionModel, batches: Iterable[Sequence[str]], writer: SampleWriter, *, seed: int,
                   n_iter: int = 1, fixed_code: bool = False, **kwargs: Any) -> None:
    """CompVis's loop: every prompt batch ``n_iter`` times, written through ``writer``.

    One generator seeded with ``seed`` draws all noise; with ``fixed_code`` one starting noise serves every batch,
    so equal prompts give equal images. ``kwargs`` go to ``text_to_image`` (or ``image_to_image`` when they
    hold ``init_image``).
    """
    batches = [list(batch) for batch in batches]
    generator = torch.Generator(model.device).manual_seed(seed)
    start = None
    if fixed_code:
        height, width = output_size(model, kwargs.get("height"), kwargs.get("width"))
        start = torch.randn(model.sample_shape(max(map(len, batches)), height, width), generator=generator,
                            device=model.device)
    sample = image_to_image if "init_image" in kwargs else text_to_image
    for _ in tqdm(range(n_iter), desc="Sampling"):
        for prompts in tqdm(batches, desc="data", leave=False):
            noise = start[:len(prompts)] if start is not None else None
            writer.add(sample(model, prompts, generator=generator, latents=noise, **kwargs), prompts)
    writer.finish()
