"""Tokenizers for text encoders trained from scratch: word-level (vocabulary in the checkpoint) and UTF-8 bytes.

Both are ``nn.Module``s without parameters so that an encoder holding one saves what it needs with its own
``state_dict``: the word tokenizer stores its vocabulary as extra state (a list of strings, which
``torch.load(..., weights_only=True)`` accepts). Every prompt becomes ``<bos> tokens <eos>`` padded with ``<pad>``
to ``max_length``; the empty prompt ``""`` is ``<bos> <eos>``, so no row is fully masked.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from pixelforge.data import shapes

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(len(SPECIALS))
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of ``text``: ``"A red, circle"`` -> ``["a", "red", ",", "circle"]``."""
    return WORD_PATTERN.findall(text.lower())


def vocabulary(texts: Iterable[str]) -> list[str]:
    """Sorted distinct words of ``texts``: a vocabulary that depends only on the set of words, not their order."""
    return sorted({word for text in texts for word in split_words(text)})


def shapes_vocabulary() -> list[str]:
    """Every word a shapes caption can contain (all templates × all attribute values), independent of sampling."""
    captions = (
        shapes.describe(dict(zip(shapes.ATTRIBUTES, combination, strict=True)), template)
        for combination in shapes.ALL_COMBINATIONS
        for template in range(len(shapes.TEMPLATES))
    )
    return vocabulary(captions)


class Tokenizer(nn.Module):
    """Texts -> (ids (B,max_length) long, mask (B,max_length) bool, True = real token), on the CPU."""

    vocab_size: int

    def __init__(self, max_length: int) -> None:
        super().__init__()
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2 (room for <bos> and <eos>), got {max_length!r}")
        self.max_length = max_length

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without specials."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, specials dropped."""
        raise NotImplementedError

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise a batch of prompts, truncating (with one warning) those longer than ``max_length``."""
        if isinstance(texts, str):
            texts = [texts]
        rows = [[BOS, *self.encode(text), EOS] for text in texts]
        if any(len(tokens) > self.max_length for tokens in rows):
            warnings.warn(f"prompts longer than max_length={self.max_length} tokens are truncated", stacklevel=2)
        ids = torch.full((len(texts), self.max_length), PAD, dtype=torch.long)
        for row, tokens in enumerate(rows):
            tokens = tokens if len(tokens) <= self.max_length else [*tokens[: self.max_length - 1], EOS]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids, ids != PAD


class WordTokenizer(Tokenizer):
    """Whitespace/punctuation word tokenizer over a fixed vocabulary; unknown words map to ``<unk>``."""

    def __init__(self, words: Sequence[str], max_length: int = 16) -> None:
        """``words`` is the vocabulary after the specials, in id order (build it with ``vocabulary``)."""
        super().__init__(max_length)
        self._set_words(words)

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_length: int = 16) -> WordTokenizer:
        """A tokenizer whose vocabulary is every word of ``texts``."""
        return cls(vocabulary(texts), max_length)

    def _set_words(self, words: Sequence[str]) -> None:
        """Install a vocabulary after checking that every entry is one distinct non-special word."""
        words = list(words)
        bad = [w for w in words if not isinstance(w, str) or split_words(w) != [w] or w in SPECIALS]
        if bad:
            raise ValueError(f"vocabulary entries must be lower-case words or punctuation marks, got {bad[:5]}")
        if len(set(words)) != len(words):
            duplicates = sorted({w for w in words if words.count(w) > 1})
            raise ValueError(f"vocabulary has duplicate words {duplicates[:5]}")
        self.words = words
        self.tokens = [*SPECIALS, *words]
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        self.vocab_size = len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Ids of the words of ``text``, ``<unk>`` for words outside the vocabulary."""
        return [self.ids.get(word, UNK) for word in split_words(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Space-joined words of ``ids``; padding, <bos> and <eos> dropped, unknown words kept as ``<unk>``."""
        return " ".join(self.tokens[int(i)] for i in ids if int(i) not in (PAD, BOS, EOS))

    def get_extra_state(self) -> dict[str, Any]:
        """The vocabulary, saved with the owning model's ``state_dict``."""
        return {"words": list(self.words)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the checkpoint's vocabulary (an embedding table sized for another one fails to load)."""
        self._set_words(state["words"])

    def extra_repr(self) -> str:
        """Vocabulary size and length, for printed models."""
        return f"vocab_size={self.vocab_size}, max_length={self.max_length}"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes shifted past the specials: any text, no vocabulary to build or save."""

    vocab_size = len(SPECIALS) + 256

    def encode(self, text: str) -> list[int]:
        """One id per UTF-8 byte of ``text``."""
        return [len(SPECIALS) + b for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the byte ids in ``ids``; a character cut by truncation is dropped."""
        data = bytes(int(i) - len(SPECIALS) for i in ids if int(i) >= len(SPECIALS))
        return data.decode("utf-8", errors="ignore")

    def extra_repr(self) -> str:
        """Length, for printed models."""
        return f"max_length={self.max_length}"


class BPETokenizer(Tokenizer):
    """CLIP's byte-pair encoding (49,408 tokens; its vocabulary ships inside the ``open_clip_torch`` wheel, so it
    works offline), with the ids shifted past this module's specials so prompts are framed and padded as above."""

    vocab_size = len(SPECIALS) + 49408

    def __init__(self, max_length: int = 77) -> None:
        super().__init__(max_length)
        from pixelforge.modules.encoders.clip_bpe import clip_tokenizer

        self.bpe = clip_tokenizer()

    def encode(self, text: str) -> list[int]:
        """CLIP's BPE ids of ``text`` (lower-cased, as CLIP's tokenizer does), without its own start/end tokens."""
        return [len(SPECIALS) + i for i in self.bpe.encode(text, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.bpe.decode([int(i) - len(SPECIALS) for i in ids if int(i) >= len(SPECIALS)]).strip()

    def extra_repr(self) -> str:
        return f"max_length={self.max_length}, vocab_size={self.vocab_size}"
