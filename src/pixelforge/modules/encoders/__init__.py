"""Conditioning encoders for diffusion: ``forward(cond) -> (tokens (B,T,dim), mask (B,T) bool | None)``, ``dim``,
and ``output = "context"`` (they feed cross-attention through a ``pixelforge.conditioning.Embedder``).

Every encoder also has ``unconditional(batch_size)``, the null condition for classifier-free guidance (empty
prompts, null labels). ``transformers`` is imported only when a FrozenHFTextEncoder is built.
"""

from pixelforge.modules.encoders.class_embedder import ClassEmbedder
from pixelforge.modules.encoders.clip_text import CausalTextTransformer
from pixelforge.modules.encoders.huggingface import FrozenHFTextEncoder
from pixelforge.modules.encoders.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    WordTokenizer,
    shapes_vocabulary,
    vocabulary,
)
from pixelforge.modules.encoders.transformer import TransformerTextEncoder

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CausalTextTransformer",
    "ClassEmbedder",
    "FrozenHFTextEncoder",
    "TransformerTextEncoder",
    "WordTokenizer",
    "shapes_vocabulary",
    "vocabulary",
]
