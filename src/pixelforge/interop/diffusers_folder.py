"""Stable Diffusion as a diffusers pipeline folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``), read and
written with pixelforge's own name maps: what diffusers' ``from_pretrained`` reads and ``save_pretrained`` writes.

A folder is read into the same CompVis-named tensors a single file holds, plus the config overrides its
``config.json`` files say (sizes, prediction type, the text tower), so both go through one strict loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pixelforge.interop.compvis import UNET_PREFIX, VAE_PREFIX, unet_to_compvis, vae_to_compvis
from pixelforge.interop.diffusers_names import (
    unet_from_diffusers,
    unet_to_diffusers,
    vae_from_diffusers,
    vae_to_diffusers,
)

WEIGHTS = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
           "pytorch_model.bin")
CLIP_PREFIX = "cond_stage_model.transformer."


def is_diffusers_folder(path: str | Path) -> bool:
    """Whether ``path`` is a diffusers pipeline folder (a ``model_index.json`` beside ``unet/``)."""
    path = Path(path)
    return (path / "model_index.json").is_file() and (path / "unet").is_dir()


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a component folder: safetensors, or a ``.bin`` read with ``weights_only=True``."""
    for name in WEIGHTS:
        path = folder / name
        if path.is_file():
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no weights in {folder} (looked for {', '.join(WEIGHTS)})")


def config_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def read_folder(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """(CompVis-named tensors, config overrides, version) of a diffusers pipeline folder."""
    root = Path(path)
    unet, vae, text = (config_of(root / part) for part in ("unet", "vae", "text_encoder"))
    scheduler = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    levels, blocks = len(unet["block_out_channels"]), unet["layers_per_block"]
    state = {UNET_PREFIX + k: v for k, v in unet_from_diffusers(read_weights(root / "unet"), blocks, levels).items()}
    state.update({VAE_PREFIX + k: v for k, v in vae_from_diffusers(
        read_weights(root / "vae"), len(vae["block_out_channels"]), vae["layers_per_block"]).items()})
    state.update({CLIP_PREFIX + "text_model." + k.removeprefix("text_model."): v
                  for k, v in read_weights(root / "text_encoder").items() if "position_ids" not in k})
    widths = unet["block_out_channels"]
    heads = unet["attention_head_dim"]
    per_level = heads if isinstance(heads, list) else [heads] * levels
    head_channels = {widths[i] // per_level[i] for i in range(levels)}
    attention = [2 ** i for i, kind in enumerate(unet["down_block_types"]) if kind.startswith("CrossAttn")]
    overrides: dict[str, Any] = {
        "image_size": unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1),
        "prediction_type": "v" if scheduler.get("prediction_type") == "v_prediction" else "eps",
        "scale_factor": vae.get("scaling_factor", 0.18215),
        "unet": {"model_channels": widths[0], "channel_mult": [w // widths[0] for w in widths],
                 "num_res_blocks": blocks, "attention_resolutions": attention,
                 "use_linear_in_transformer": bool(unet.get("use_linear_projection", False)),
                 "upcast_attention": bool(unet.get("upcast_attention", False)),
                 **({"num_heads": per_level[0], "num_head_channels": -1} if not isinstance(heads, list)
                    else {"num_heads": -1, "num_head_channels": head_channels.pop()})},
        "first_stage": {"embed_dim": vae["latent_channels"], "ddconfig": {
            "ch": vae["block_out_channels"][0], "ch_mult": [w // vae["block_out_channels"][0]
                                                            for w in vae["block_out_channels"]],
            "num_res_blocks": vae["layers_per_block"], "z_channels": vae["latent_channels"]}},
        "conditioner": {"caption": {"encoder": {  # diffusers stores SD 2.x's tower cut at the penultimate layer
            "hidden_size": text["hidden_size"], "num_hidden_layers": text["num_hidden_layers"],
            "num_attention_heads": text["num_attention_heads"], "intermediate_size": text["intermediate_size"],
            "hidden_act": text["hidden_act"], "layer": "last", "pad_token": pad_token(root / "tokenizer")}}},
    }
    # CLIP ViT-L/14 (1.x) uses quick-GELU, OpenCLIP ViT-H/14 (2.x) GELU
    version = "v1" if text["hidden_act"] == "quick_gelu" else ("v2-v" if overrides["prediction_type"] == "v" else "v2")
    return state, overrides, version


def pad_token(folder: Path) -> str:
    """The padding token of a tokenizer folder (SD 1.x pads with end-of-text, 2.x with ``!``)."""
    config = json.loads((folder / "tokenizer_config.json").read_text())
    token = config.get("pad_token", "<|endoftext|>")
    return token["content"] if isinstance(token, dict) else token


def unet_config(model: Any) -> dict[str, Any]:
    """diffusers' ``UNet2DConditionModel`` config of the model's U-Net."""
    cfg = model.unet.config
    widths = [cfg["model_channels"] * m for m in cfg["channel_mult"]]
    attended = [2 ** i in cfg["attention_resolutions"] for i in range(len(widths))]
    heads = cfg["num_heads"] if cfg["num_head_channels"] <= 0 else [w // cfg["num_head_channels"] for w in widths]
    return {"_class_name": "UNet2DConditionModel", "sample_size": model.image_size // model.downsample_factor,
            "in_channels": cfg["in_channels"], "out_channels": cfg["out_channels"],
            "layers_per_block": cfg["num_res_blocks"], "block_out_channels": widths,
            "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attended],
            "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attended)],
            "cross_attention_dim": cfg["context_dim"], "attention_head_dim": heads,
            "use_linear_projection": cfg["use_linear_in_transformer"], "transformer_layers_per_block": 1,
            "upcast_attention": cfg["upcast_attention"],
            "flip_sin_to_cos": True, "freq_shift": 0, "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu"}


def vae_config(model: Any) -> dict[str, Any]:
    """diffusers' ``AutoencoderKL`` config of the model's first stage."""
    ddconfig, levels = model.first_stage.hparams["ddconfig"], len(model.first_stage.hparams["ddconfig"]["ch_mult"])
    return {"_class_name": "AutoencoderKL", "in_channels": ddconfig.get("in_channels", 3),
            "out_channels": ddconfig.get("in_channels", 3), "latent_channels": model.first_stage.embed_dim,
            "block_out_channels": [ddconfig["ch"] * m for m in ddconfig["ch_mult"]],
            "layers_per_block": ddconfig["num_res_blocks"], "down_block_types": ["DownEncoderBlock2D"] * levels,
            "up_block_types": ["UpDecoderBlock2D"] * levels, "norm_num_groups": 32, "act_fn": "silu",
            "sample_size": model.image_size, "scaling_factor": float(model.scale_factor)}


def scheduler_config(model: Any) -> dict[str, Any]:
    """diffusers' PNDM (PLMS) scheduler config, CompVis's timesteps and the model's schedule and target."""
    schedule = model.schedule
    return {"_class_name": "PNDMScheduler", "num_train_timesteps": schedule.num_timesteps,
            "beta_start": schedule.beta_start, "beta_end": schedule.beta_end, "beta_schedule": schedule.kind,
            "prediction_type": {"eps": "epsilon", "v": "v_prediction"}[model.prediction_type],
            "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading",
            "clip_sample": False}  # for the DDIM scheduler a user may build from this config


def write_text_encoder(tower: Any, folder: Path) -> None:
    """The text tower as diffusers keeps it: SD 2.x's is cut after its penultimate layer, whose output through the
    final LayerNorm is then the last hidden state."""
    model = tower.model
    if tower.layer == "penultimate":
        config = model.config.__class__(**{**model.config.to_dict(), "num_hidden_layers":
                                           model.config.num_hidden_layers - 1})
        last = f"layers.{model.config.num_hidden_layers - 1}."
        cut = type(model)(config)
        cut.load_state_dict({k: v for k, v in model.state_dict().items() if last not in k})
        model = cut
    model.save_pretrained(folder / "text_encoder")
    tower.tokenizer.save_pretrained(folder / "tokenizer")


def write_folder(model: Any, path: str | Path) -> Path:
    """Write ``model`` (Stable Diffusion's architecture: see ``stable_diffusion.save_folder``) as a diffusers
    pipeline folder."""
    from safetensors.torch import save_file

    root = Path(path)
    ddconfig = model.first_stage.hparams["ddconfig"]
    unet = unet_to_diffusers(unet_to_compvis(model.networks(use_ema=True)[0].state_dict()),
                             model.unet.config["num_res_blocks"])
    vae = vae_to_diffusers(vae_to_compvis(model.first_stage.state_dict(), len(ddconfig["ch_mult"]),
                                          ddconfig["num_res_blocks"]), len(ddconfig["ch_mult"]),
                           ddconfig["num_res_blocks"])
    for name, weights, config in (("unet", unet, unet_config(model)), ("vae", vae, vae_config(model))):
        (root / name).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(root / name / WEIGHTS[0]))
        (root / name / "config.json").write_text(json.dumps(config, indent=2))
    write_text_encoder(model.conditioner.embedders["caption"].encoder, root)
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(model), indent=2))
    components = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                  "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                  "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None],
                  "feature_extractor": [None, None]}
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", **components,
                                                       "requires_safety_checker": False}, indent=2))
    return root
