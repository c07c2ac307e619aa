"""Runs saved before the conditioner existed: their configs name ``DDPM`` and ``LatentDiffusion`` with the old keys.

``runs.upgrade`` points those targets here; each factory builds the equivalent ``DiffusionModel`` and renames the
old checkpoint keys as they load, so the weights, the optimizer state and the results stay the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from pixelforge.conditioning import Conditioner, Embedder, Labels, SpatialMap
from pixelforge.models.diffusion import DiffusionModel


def rename_keys(is_old: Callable[[set[str]], bool], renames: Sequence[tuple[str, str]],
                defaults: Mapping[str, torch.Tensor], module: nn.Module, state_dict: dict[str, Any], prefix: str,
                *args: Any) -> None:
    """A load-state-dict pre-hook: in an old-format state dict, move keys from each old prefix to the new one
    (first match) and add the missing ``defaults``; a state dict the new model wrote is left as it is."""
    if not is_old({key[len(prefix):] for key in state_dict if key.startswith(prefix)}):
        return
    for key in list(state_dict):
        for old, new in renames:
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
                break
    for key, value in defaults.items():
        state_dict.setdefault(prefix + key, value)


def upgraded(model: DiffusionModel, is_old: Callable[[set[str]], bool], renames: Sequence[tuple[str, str]],
             defaults: Mapping[str, torch.Tensor] | None = None) -> DiffusionModel:
    """``model``, loading state dicts that ``is_old`` recognises through ``renames`` (old prefix, new prefix)."""
    model.register_load_state_dict_pre_hook(partial(rename_keys, is_old, renames, dict(defaults or {})))
    return model


def label_name(cond_key: str | Sequence[str]) -> str:
    """The name of a label embedder: its key, or ``labels`` for several."""
    return cond_key if isinstance(cond_key, str) else "labels"


def ddpm(unet: nn.Module, cond_key: str | Sequence[str] | None = None, cond_drop_prob: float = 0.1,
         channels: int = 1, **kwargs: Any) -> DiffusionModel:
    """The old pixel ``DDPM``: labels under ``cond_key`` for the U-Net's label embedding, dropped at
    ``cond_drop_prob``. Its EMA averaged the bare U-Net and it had no ``scale_factor``."""
    embedders = {}
    if cond_key:
        if unet.num_classes is None:
            raise ValueError(f"cond_key={cond_key!r} needs a class-conditional U-Net (set unet.num_classes)")
        embedders[label_name(cond_key)] = Embedder(Labels(unet.num_classes), cond_key, cond_drop_prob)
    model = DiffusionModel(unet, conditioner=Conditioner(**embedders), channels=channels, **kwargs)
    # the old shadow was the U-Net itself; old state dicts are those without a scale_factor
    return upgraded(model, lambda keys: "scale_factor" not in keys, [("ema.module.", "ema.module.unet.")],
                    {"scale_factor": torch.tensor(1.0)})


def latent_diffusion(unet: nn.Module | Callable[..., nn.Module], first_stage: Mapping[str, Any],
                     cond_stage: nn.Module | None = None, conditioning_key: str | None = "crossattn",
                     cond_stage_key: str = "caption", concat_key: str | None = None,
                     cond_key: str | Sequence[str] | None = None, ucg_rate: float = 0.1,
                     concat_channels: int | None = None, scale_by_std: bool = True, **kwargs: Any) -> DiffusionModel:
    """The old ``LatentDiffusion``: ``cond_stage`` encoded ``batch[cond_stage_key]`` (crossattn, hybrid), labels
    under ``cond_key`` went to the U-Net (class), ``batch[concat_key]`` joined the latents (concat, hybrid); one
    ``ucg_rate`` dropped them. Its U-Net and encoder sat in one wrapper, ``unet.unet`` and ``unet.cond_stage``."""
    embedders: dict[str, Embedder] = {}  # named by the batch key they read, as in today's configs
    if cond_stage is not None:
        embedders[cond_stage_key] = Embedder(cond_stage, cond_stage_key, ucg_rate)
    if cond_key:
        counts = unet.num_classes if isinstance(unet, nn.Module) else unet.keywords["num_classes"]
        embedders[label_name(cond_key)] = Embedder(Labels(counts), cond_key, ucg_rate)
    if concat_key is not None:
        if concat_channels is None:
            raise ValueError("an old concat run needs model.concat_channels: the channels of its concat map")
        embedders["concat"] = Embedder(SpatialMap(concat_channels), concat_key)
    if conditioning_key is None and embedders:
        raise ValueError("conditioning_key null takes no cond_stage, cond_key or concat_key")
    model = DiffusionModel(unet, first_stage=first_stage, conditioner=Conditioner(**embedders),
                           scale_by_std=scale_by_std, **kwargs)
    encoder = f"conditioner.embedders.{cond_stage_key}.encoder."
    renames = [("unet.unet.", "unet."), ("unet.cond_stage.", encoder),
               ("ema.module.cond_stage.", "ema.module." + encoder)]
    return upgraded(model, lambda keys: any(key.startswith("unet.unet.") for key in keys), renames)
