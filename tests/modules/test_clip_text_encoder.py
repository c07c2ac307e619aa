"""A frozen CLIP text tower encoded as Stable Diffusion encodes: EOS padding to 77 tokens, no attention mask, the
last layer (1.x) or the penultimate through the final LayerNorm (2.x); a diffusers folder's sibling tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pixelforge.modules.encoders import FrozenHFTextEncoder
from pixelforge.modules.encoders.huggingface import text_transformer

transformers = pytest.importorskip("transformers")


def byte_characters() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, which byte-level BPE vocabularies are made of."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def byte_level_vocab(folder: Path) -> Path:
    """A CLIP BPE vocabulary of single characters (no merges): enough for a tokenizer that runs offline."""
    chars = byte_characters()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    """A diffusers-style folder: text_encoder/ (a tiny random CLIPTextModel) beside tokenizer/."""
    root = tmp_path_factory.mktemp("sd")
    vocab = byte_level_vocab(root / "vocab")
    tokenizer = transformers.CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"))
    tokenizer.save_pretrained(root / "tokenizer")
    config = transformers.CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=77,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    transformers.CLIPTextModel(config).save_pretrained(root / "text_encoder")
    return root


def test_stable_diffusion_encoding_has_no_mask_and_pads_with_eos(sd_folder: Path) -> None:
    encoder = FrozenHFTextEncoder(str(sd_folder), max_length=77, attention_mask=False)
    tokens, mask = encoder(["a cat", "a photograph of an astronaut"])
    assert tokens.shape == (2, 77, 32) and mask is None
    ids = encoder.tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, -1] == encoder.tokenizer.eos_token_id  # padded with end-of-text, as SD's tokenizer pads
    torch.testing.assert_close(tokens[:1], encoder.model(ids).last_hidden_state)  # every position, unmasked
    masked, real = FrozenHFTextEncoder(str(sd_folder), max_length=77)(["a cat"])
    assert real.sum() == (ids != encoder.tokenizer.pad_token_id).sum() + 1  # the real tokens and one end-of-text


def test_the_penultimate_layer_goes_through_the_final_layer_norm(sd_folder: Path) -> None:
    encoder = FrozenHFTextEncoder(str(sd_folder), attention_mask=False, layer="penultimate")
    tokens, _ = encoder(["a cat"])
    ids = encoder.tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    hidden = encoder.model(ids, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(tokens, text_transformer(encoder.model).final_layer_norm(hidden))
    with pytest.raises(ValueError, match="layer 'first' is not one of"):
        FrozenHFTextEncoder(str(sd_folder), layer="first")


def test_the_clip_tokenizer_built_offline_numbers_tokens_as_open_clip(tmp_path: Path) -> None:
    open_clip = pytest.importorskip("open_clip")
    from pixelforge.modules.encoders.clip_bpe import VOCAB_SIZE, clip_tokenizer

    tokenizer = clip_tokenizer(cache_dir=tmp_path)
    assert len(tokenizer) == VOCAB_SIZE
    prompts = ["a photograph of an astronaut riding a horse", "A red CUBE, 3 spheres & a cat's toy!"]
    ours = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    theirs = open_clip.tokenize(prompts)  # open_clip's own tokenizer: start, tokens, end, then zeros
    for row, reference in zip(ours, theirs, strict=True):
        length = int((reference != 0).sum())
        assert row[:length].tolist() == reference[:length].tolist()
        assert (row[length:] == tokenizer.eos_token_id).all()  # SD 1.x pads with the end-of-text token
    assert clip_tokenizer("!", cache_dir=tmp_path).pad_token_id == 0  # OpenCLIP's padding (SD 2.x)
