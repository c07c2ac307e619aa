"""Stable Diffusion's released weights in pixelforge's own modules: build the model a version names
(``configs/model/sd/``), read a CompVis / Stability single file (``.ckpt`` or ``.safetensors``) into it strictly, and
write one back.

A single file holds ``model.diffusion_model.*`` (the U-Net), ``first_stage_model.*`` (the KL autoencoder),
``cond_stage_model.*`` (the text tower: Hugging Face CLIP names in 1.x, OpenCLIP names in 2.x), often
``model_ema.*`` (CompVis's EMA of the U-Net, its names without dots) and the schedule's buffers. Every key is used
or named here as dropped on purpose; anything else is an error that lists it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pixelforge import CONFIG_DIR
from pixelforge.checkpoints import CheckpointError
from pixelforge.interop.compvis import (
    UNET_PREFIX,
    VAE_PREFIX,
    rename,
    unet_from_compvis,
    unet_to_compvis,
    vae_from_compvis,
    vae_to_compvis,
)
from pixelforge.interop.diffusers_folder import is_diffusers_folder, read_folder, write_folder
from pixelforge.models.diffusion import DiffusionModel
from pixelforge.modules.encoders.clip_bpe import VOCAB_SIZE, clip_tokenizer
from pixelforge.modules.encoders.huggingface import FrozenTextTower, text_transformer
from pixelforge.modules.lora import add_lora
from pixelforge.utils.meta import meta_parameters, parameters_on_meta

# version -> (config under configs/model/sd/, the keys that differ from it)
VERSIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "v1": ("v1", {}),
    "v2": ("v2", {}),
    "v2-v": ("v2", {"prediction_type": "v", "image_size": 768}),
}
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: a transformers CLIPTextModel
OPENCLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP's text transformer
EMA_PREFIX = "model_ema."
# keys a CompVis file holds that are not weights of the model: the schedule (rebuilt from the config, and
# checked against it), EMA bookkeeping, position ids, OpenCLIP's unused projection and temperature
SCHEDULE_KEYS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                 "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2", "logvar")
DROPPED = ("model_ema.decay", "model_ema.num_updates", CLIP_PREFIX + "text_model.embeddings.position_ids",
           OPENCLIP_PREFIX + "text_projection", OPENCLIP_PREFIX + "logit_scale")


def toy(image_size: int = 32) -> dict[str, Any]:
    """Overrides that shrink a version to a toy of its architecture (f = 2, 32-wide U-Net and text tower): the
    same blocks, names and code paths, for checks that run in seconds on a CPU."""
    return {"image_size": image_size,
            "unet": {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [1],
                     "num_heads": 2},
            "first_stage": {"image_size": image_size, "ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1}},
            "conditioner": {"caption": {"encoder": {"hidden_size": 32, "num_hidden_layers": 2,
                                                    "num_attention_heads": 2, "intermediate_size": 64}}}}


def clip_text_tower(hidden_size: int, num_hidden_layers: int, num_attention_heads: int, intermediate_size: int,
                    hidden_act: str, layer: str, pad_token: str, max_length: int = 77) -> FrozenTextTower:
    """A CLIP text tower of this shape with random weights (the checkpoint fills them) and CLIP's tokenizer,
    encoding as Stable Diffusion does: padded to ``max_length``, no attention mask."""
    import transformers

    tokenizer = clip_tokenizer(pad_token)
    config = transformers.CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size, hidden_act=hidden_act,
        max_position_embeddings=max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return FrozenTextTower(transformers.CLIPTextModel(config), tokenizer, max_length, attention_mask=False,
                           layer=layer)


def sd_config(version: str, overrides: Mapping[str, Any] | None = None) -> DictConfig:
    """The model config of ``version`` (v1, v2, v2-v), with ``overrides`` merged in (e.g. tiny sizes in tests)."""
    if version not in VERSIONS:
        raise ValueError(f"unknown Stable Diffusion version {version!r}; valid: {', '.join(VERSIONS)}")
    name, changes = VERSIONS[version]
    cfg = OmegaConf.load(CONFIG_DIR / "model" / "sd" / f"{name}.yaml")
    cfg = OmegaConf.merge(cfg, changes, overrides or {})
    cfg.pop("base_learning_rate", None)
    cfg.optimizer = cfg.get("optimizer") or {"_target_": "torch.optim.AdamW", "_partial_": True}
    return cfg


def build(version: str, overrides: Mapping[str, Any] | None = None) -> DiffusionModel:
    """The ``version`` model with random weights."""
    return instantiate(sd_config(version, overrides), _convert_="all")


def read_state_dict(path: str | Path, unsafe: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a single file: ``.safetensors`` memory-mapped, ``.ckpt`` with ``weights_only=True`` (a pickle
    that needs more runs code, allowed only with ``unsafe``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Stable Diffusion checkpoint at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not unsafe, mmap=True)
    except Exception as error:
        raise CheckpointError(
            f"{path} is not loadable with weights_only=True ({type(error).__name__}: {str(error)[:200]}); it "
            "pickles more than tensors (old CompVis files pickle Lightning callbacks). Convert it once on a "
            "machine you trust: python scripts/convert.py --unsafe --ckpt FILE --to FILE.safetensors, or pass "
            "--unsafe to load it here; a pickle can run any code, so only for files from a trusted source") from None
    return checkpoint.get("state_dict", checkpoint)


def detect_version(state: Mapping[str, torch.Tensor]) -> str:
    """v1 or v2 from the text tower's keys (a 2.x 768-v file looks like 2.x-base: pass v2-v for it)."""
    if any(key.startswith(OPENCLIP_PREFIX) for key in state):
        return "v2"
    if any(key.startswith(CLIP_PREFIX) for key in state):
        return "v1"
    raise CheckpointError("no text tower in the file (neither cond_stage_model.transformer.* of SD 1.x nor "
                          "cond_stage_model.model.* of SD 2.x): not a Stable Diffusion single file")


def ema_name(key: str) -> str:
    """CompVis's EMA name of a U-Net key: ``model.diffusion_model.a.b`` -> ``model_ema.diffusion_modelab``."""
    return EMA_PREFIX + key.removeprefix("model.").replace(".", "")


def split(state: Mapping[str, torch.Tensor], use_ema: bool) -> dict[str, dict[str, torch.Tensor]]:
    """The file's U-Net (its EMA weights when there and ``use_ema``), autoencoder and text weights, unprefixed."""
    parts: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "vae": {}, "clip": {}, "openclip": {}}
    prefixes = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "clip": CLIP_PREFIX, "openclip": OPENCLIP_PREFIX}
    ema = use_ema and any(key.startswith(EMA_PREFIX) and key not in DROPPED for key in state)
    unknown = []
    for key, value in state.items():
        part = next((name for name, prefix in prefixes.items() if key.startswith(prefix)), None)
        if part is not None and key not in DROPPED:
            if part == "unet" and ema:
                value = state[ema_name(key)]
            parts[part][key[len(prefixes[part]):]] = value
        elif key not in DROPPED and key not in SCHEDULE_KEYS and not key.startswith(EMA_PREFIX):
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{len(unknown)} key(s) of the file belong to no part of Stable Diffusion: "
                              f"{unknown[:8]}")
    return parts


def check_schedule(state: Mapping[str, torch.Tensor], model: DiffusionModel) -> None:
    """The file's own alpha_bar table, when it has one, must be the config's schedule."""
    if "alphas_cumprod" in state:
        theirs, ours = state["alphas_cumprod"].double(), model.schedule.alphas_cumprod.double()
        if theirs.shape != ours.shape or not torch.allclose(theirs, ours, atol=1e-6):
            raise CheckpointError("the file's noise schedule (alphas_cumprod) is not the config's scaled-linear "
                                  "0.00085 -> 0.012 over 1000 steps; pass the config it was trained with")


OPENCLIP_RENAMES = [("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."),
                    ("mlp.c_proj.", "mlp.fc2."), ("attn.out_proj.", "self_attn.out_proj.")]
OPENCLIP_NAMES = {"token_embedding.weight": "embeddings.token_embedding.weight",
                  "positional_embedding": "embeddings.position_embedding.weight"}


def openclip_to_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP's text transformer weights under ``transformers``' CLIPTextModel names (q/k/v split out)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in OPENCLIP_NAMES:
            out[OPENCLIP_NAMES[key]] = value
        elif key.startswith("ln_final."):
            out["final_layer_norm." + key.removeprefix("ln_final.")] = value
        elif key.startswith("transformer.resblocks."):
            rest = "encoder.layers." + key.removeprefix("transformer.resblocks.")
            if ".attn.in_proj_" in rest:
                layer, kind = rest.split(".attn.in_proj_")
                out.update({f"{layer}.self_attn.{name}_proj.{kind}": chunk
                            for name, chunk in zip("qkv", value.chunk(3), strict=True)})
            else:
                out[rename(rest, OPENCLIP_RENAMES, reverse=False)] = value
        else:
            raise CheckpointError(f"OpenCLIP text key {key!r} has no counterpart in transformers' CLIPTextModel")
    return out


def transformers_to_openclip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``openclip_to_transformers``: SD 2.x's OpenCLIP names for a CLIPTextModel's weights."""
    names = {ours: theirs for theirs, ours in OPENCLIP_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in ((k.removeprefix("text_model."), v) for k, v in state.items()):
        if key in names:
            out[names[key]] = value
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key.removeprefix("final_layer_norm.")] = value
        elif ".self_attn.q_proj." in key:
            layer, kind = key.split(".self_attn.q_proj.")
            parts = [state_key(state, f"{layer}.self_attn.{n}_proj.{kind}") for n in "qkv"]
            out["transformer.resblocks." + layer.removeprefix("encoder.layers.") + ".attn.in_proj_" + kind] = \
                torch.cat(parts)
        elif ".self_attn.k_proj." not in key and ".self_attn.v_proj." not in key:
            out["transformer.resblocks." + rename(key.removeprefix("encoder.layers."), OPENCLIP_RENAMES,
                                                  reverse=True)] = value
    return out


def state_key(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    """``state[key]``, under the installed transformers' ``text_model.`` prefix or not."""
    return state[key] if key in state else state["text_model." + key]


def load_text_weights(tower: FrozenTextTower, weights: Mapping[str, torch.Tensor],
                      dtype: torch.dtype = torch.float32) -> None:
    """Fill the tower's model strictly; ``text_model.`` prefixes follow the installed transformers' naming."""
    prefix = "text_model." if any(key.startswith("text_model.") for key in tower.model.state_dict()) else ""
    load_strict(tower.model, {prefix + key.removeprefix("text_model."): value for key, value in weights.items()},
                "the text tower", dtype)


def load_strict(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], what: str,
                dtype: torch.dtype = torch.float32) -> None:
    """Put the file's tensors (floating ones in ``dtype``) into ``module`` as its weights, strictly: missing and
    unexpected keys are named in a CheckpointError. The tensors are assigned, not copied into the module's own, so
    a module built with ``parameters_on_meta`` never holds a second set of weights."""
    weights = {key: value.to(dtype) if value.is_floating_point() else value for key, value in weights.items()}
    missing, unexpected = module.load_state_dict(weights, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(f"{what} does not fit the file: missing {missing[:8]} ({len(missing)}), "
                              f"unexpected {unexpected[:8]} ({len(unexpected)})")


def load_weights(model: DiffusionModel, state: Mapping[str, torch.Tensor], use_ema: bool = True,
                 dtype: torch.dtype = torch.float32) -> DiffusionModel:
    """Fill ``model`` (Stable Diffusion's architecture, its weights random or on the meta device) strictly from a
    single file's tensors, the weights in ``dtype``."""
    parts = split(state, use_ema)
    check_schedule(state, model)
    load_strict(model.unet, unet_from_compvis(parts["unet"]), "the U-Net", dtype)
    if model.ema is not None:
        load_strict(model.ema.module["unet"], {k: v.clone() for k, v in model.unet.state_dict().items()},
                    "the EMA U-Net", dtype)
    ddconfig = model.first_stage.hparams["ddconfig"]
    vae = vae_from_compvis(parts["vae"], len(ddconfig["ch_mult"]), ddconfig["num_res_blocks"])
    load_strict(model.first_stage, {**vae, "batches_seen": model.first_stage.batches_seen}, "the autoencoder", dtype)
    tower = model.conditioner.embedders["caption"].encoder
    load_text_weights(tower, parts["clip"] or openclip_to_transformers(parts["openclip"]), dtype)
    empty = meta_parameters(model) + meta_parameters(tower.model)
    if empty:
        raise CheckpointError(f"the file left {len(empty)} weight(s) unfilled: {empty[:8]}")
    return model.weights_to(dtype) if dtype != torch.float32 else model


def load(path: str | Path, version: str | None = None, use_ema: bool = True,
         overrides: Mapping[str, Any] | None = None, unsafe: bool = False,
         dtype: torch.dtype = torch.float32) -> DiffusionModel:
    """The Stable Diffusion single file (or diffusers pipeline folder) at ``path`` as a pixelforge
    ``DiffusionModel`` (eval mode).

    ``version`` (v1, v2, v2-v) is read from the file's keys (a folder's configs) when not given, except that a
    768-v single file needs ``v2-v``; ``use_ema`` takes the U-Net's EMA weights when the file has them (CompVis's
    ``--no-ema`` is ``use_ema=False``). The model is built with its parameters on the meta device and takes the
    file's tensors as its weights (in ``dtype``): no random initialisation, and no second copy of the weights in
    memory.
    """
    if is_diffusers_folder(path):
        state, folder_overrides, found = read_folder(path)
        overrides = OmegaConf.merge(folder_overrides, overrides or {})
    else:
        state = read_state_dict(path, unsafe)
        found = detect_version(state)
    with parameters_on_meta():
        model = build(version or found, overrides)
    return load_weights(model, state, use_ema, dtype).eval()


def pretrained(ckpt: str, use_ema: bool = True, unsafe: bool = False, lora: Mapping[str, Any] | None = None,
               **model: Any) -> DiffusionModel:
    """A ``DiffusionModel`` of Stable Diffusion's architecture (``model``: the arguments of
    ``configs/model/sd/*.yaml``, built by Hydra) with the weights of the single file (or diffusers folder)
    ``ckpt``: what ``experiment=sd_finetune`` trains from (its EMA, if it keeps one, starts from the same
    weights). With ``lora`` (``{rank, alpha, dropout, text_encoder}``) only adapters on the U-Net's attention
    projections (and with ``text_encoder: true`` the text tower's) train (``sd_lora``)."""
    state = read_folder(ckpt)[0] if is_diffusers_folder(ckpt) else read_state_dict(ckpt, unsafe)
    with parameters_on_meta():  # the U-Net and its EMA copy: Hydra has built the first stage and conditioner
        built = DiffusionModel(**model)
    built = load_weights(built, state, use_ema)
    if lora is not None:
        if built.ema is not None:
            raise ValueError("LoRA fine-tuning averages nothing: set model.ema=null (the adapters are small and "
                             "the base weights do not change)")
        lora = dict(lora)
        text_encoder = lora.pop("text_encoder", False)
        add_lora(built.unet, **lora)
        if text_encoder:
            built.conditioner.embedders["caption"].encoder.add_lora(**lora)
    return built


def check_exportable(model: DiffusionModel) -> None:
    """A model a CompVis single file can hold: Stable Diffusion's parts and nothing else (a ValueError says
    which part differs)."""
    from pixelforge.models.autoencoder_kl import AutoencoderKL

    embedders = dict(model.conditioner.embedders)
    encoder = getattr(embedders.get("caption"), "encoder", None)
    problems = []
    if set(embedders) != {"caption"} or not isinstance(encoder, FrozenTextTower):
        found = {name: type(e.encoder).__name__ for name, e in embedders.items()}
        problems.append(f"its conditions are {found}, where Stable Diffusion has one caption through a CLIP text "
                        "tower (FrozenTextTower)")
    if not isinstance(model.first_stage, AutoencoderKL):
        problems.append(f"its first stage is a {type(model.first_stage).__name__}, not a KL autoencoder")
    elif (patch := model.first_stage.hparams["ddconfig"].get("patch_size", 1)) != 1:
        problems.append(f"its first stage folds {patch}x{patch} pixel patches into channels (patch_size {patch})")
    if model.coord_channels:
        problems.append("its U-Net takes coordinate maps (coord_channels)")
    if model.unet.config.get("transformer_pos_embed"):
        problems.append("its U-Net's transformers add 2D positions to their tokens (transformer_pos_embed)")
    if problems:
        raise ValueError("not Stable Diffusion's architecture, so no CompVis file can hold it: " + "; ".join(problems))


def compvis_state_dict(model: DiffusionModel, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The model's weights as a CompVis single file holds them (SD 1.x text naming), ready for safetensors; the
    U-Net's EMA weights when it keeps them and ``use_ema``."""
    check_exportable(model)
    ddconfig = model.first_stage.hparams["ddconfig"]
    unet = model.networks(use_ema=use_ema)[0]
    state = {UNET_PREFIX + k: v for k, v in unet_to_compvis(unet.state_dict()).items()}
    vae = vae_to_compvis(model.first_stage.state_dict(), len(ddconfig["ch_mult"]), ddconfig["num_res_blocks"])
    state.update({VAE_PREFIX + k: v for k, v in vae.items()})
    tower = model.conditioner.embedders["caption"].encoder
    text = text_transformer(tower.model).state_dict()
    if tower.layer == "penultimate":  # SD 2.x: OpenCLIP's names
        state.update({OPENCLIP_PREFIX + k: v for k, v in transformers_to_openclip(text).items()})
    else:
        state.update({CLIP_PREFIX + "text_model." + k.removeprefix("text_model."): v for k, v in text.items()})
    state["alphas_cumprod"] = model.schedule.alphas_cumprod.float()
    return {k: v.detach().contiguous() for k, v in state.items()}


def save(model: DiffusionModel, path: str | Path, use_ema: bool = True) -> Path:
    """Write the model as a CompVis-layout ``.safetensors`` single file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(compvis_state_dict(model, use_ema), str(path))
    return path


def save_folder(model: DiffusionModel, path: str | Path) -> Path:
    """Write the model as a diffusers pipeline folder (``StableDiffusionPipeline.from_pretrained`` reads it)."""
    check_exportable(model)
    return write_folder(model, path)
