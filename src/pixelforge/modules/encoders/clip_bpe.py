"""The real CLIP BPE tokenizer, offline: its vocabulary ships inside the ``open_clip_torch`` wheel
(``bpe_simple_vocab_16e6.txt.gz``); written once as the ``vocab.json`` / ``merges.txt`` that ``transformers``'
``CLIPTokenizer`` reads, in the order CLIP numbers its 49,408 tokens."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

VOCAB_SIZE = 49408
MERGES = VOCAB_SIZE - 256 * 2 - 2  # byte tokens, byte tokens ending a word, start and end of text
INSTALL_HINT = 'pip install -e ".[sd]"'


def _open_clip_bpe() -> Path:
    """The gzipped BPE merges inside the open_clip_torch wheel."""
    try:
        from open_clip.tokenizer import default_bpe
    except ImportError as error:
        raise ImportError(f"the CLIP tokenizer needs the open_clip_torch package (it ships the vocabulary): "
                          f"{INSTALL_HINT}") from error
    return Path(default_bpe())


def write_vocabulary(folder: Path) -> Path:
    """``vocab.json`` and ``merges.txt`` of CLIP's BPE in ``folder`` (made once; kept when there)."""
    from open_clip.tokenizer import bytes_to_unicode

    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    if vocab_file.is_file() and merges_file.is_file():
        return folder
    with gzip.open(_open_clip_bpe(), "rt", encoding="utf-8") as lines:
        merges = lines.read().split("\n")[1:MERGES + 1]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file.write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def clip_tokenizer(pad_token: str = "<|endoftext|>", cache_dir: str | Path | None = None) -> Any:
    """``transformers.CLIPTokenizer`` over CLIP's vocabulary; Stable Diffusion 1.x pads with ``<|endoftext|>``
    (the default), OpenCLIP (SD 2.x) with ``!``, token 0."""
    import transformers

    root = Path(cache_dir or os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pixelforge" / "clip-bpe"
    folder = write_vocabulary(root)
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token,
                                      model_max_length=77)
