"""CLIP: the causal text tower pools at the end-of-text token, the logit scale stays clamped, the loss falls on
captioned images, and the real CLIP BPE tokenizer works offline."""

from __future__ import annotations

import math

import pytest
import torch

from pixelforge.models.clip import CLIP
from pixelforge.modules.cnn import SmallCNN
from pixelforge.modules.encoders import CausalTextTransformer, WordTokenizer
from pixelforge.modules.encoders.tokenizers import BPETokenizer

WORDS = ["a", "red", "blue", "circle", "square", "shape"]


def tower(**kwargs) -> CausalTextTransformer:
    torch.manual_seed(0)
    return CausalTextTransformer(WordTokenizer(WORDS, max_length=8), dim=32, depth=2, heads=4, **kwargs).eval()


def tiny_clip(**kwargs) -> CLIP:
    torch.manual_seed(0)
    return CLIP(SmallCNN(3, 16, [8, 16], 1, 32, 0.0, True), tower(), torch.optim.AdamW, embed_dim=16, **kwargs)


def test_the_text_tower_is_causal_and_pools_at_end_of_text() -> None:
    text = tower()
    ids, mask = text.tokenize(["a red circle", "a red square"])
    states = text.states(ids)
    # the prompts differ only in their last word: every state before it is the same
    torch.testing.assert_close(states[0, :3], states[1, :3])
    assert not torch.allclose(states[0, 3], states[1, 3])
    end = int(mask[0].sum()) - 1  # <bos> a red circle <eos>: index 4
    assert end == 4
    torch.testing.assert_close(text.pooled(["a red circle"])[0], states[0, end])
    # padding after <eos> changes nothing: the same prompt in a longer batch pools the same
    torch.testing.assert_close(text.pooled(["a red circle", "a red blue circle shape"])[0], states[0, end])
    context, context_mask = tower(layer="penultimate")(["a red circle"])
    assert context.shape == (1, 8, 32) and context_mask.sum() == 5
    with pytest.raises(ValueError, match="layer 'first' is not one of"):
        tower(layer="first")


def test_the_logit_scale_starts_at_one_over_007_and_is_clamped_at_100() -> None:
    model = tiny_clip()
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-4)
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    model.on_train_batch_end(None, None, 0)
    assert model.logit_scale.item() == pytest.approx(math.log(100))


def test_the_loss_falls_on_captioned_images() -> None:
    model = tiny_clip()
    colors = torch.tensor([[1.0, -1, -1], [-1, -1, 1.0]])  # red and blue images, each its caption
    batch = {"image": colors[torch.arange(8) % 2][:, :, None, None].expand(-1, -1, 16, 16).clone(),
             "caption": ["a red shape", "a blue shape"] * 4}
    batch["image"] += 0.1 * torch.randn(batch["image"].shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    start = model.loss(batch)[0].item()
    for _ in range(30):
        loss = model.loss(batch)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.loss(batch)[0].item() < 0.9 * start
    similarity = model.encode_image(batch["image"][:2]) @ model.encode_text(["a red shape", "a blue shape"]).T
    assert similarity[0, 0] > similarity[0, 1] and similarity[1, 1] > similarity[1, 0]


def test_the_bpe_tokenizer_is_clips_own() -> None:
    open_clip = pytest.importorskip("open_clip")
    ours, _ = BPETokenizer(max_length=16)(["a photo of a cat"])
    theirs = open_clip.tokenize(["a photo of a cat"], context_length=16)[0]  # <start> ... <end> 0 ...
    inner = theirs[1:int((theirs > 0).sum()) - 1]
    assert ours[0, 1:1 + len(inner)].tolist() == [i + 4 for i in inner.tolist()]  # shifted past the 4 specials
    assert BPETokenizer(16).decode(ours[0].tolist()) == "a photo of a cat"


def test_evaluate_clip_reports_both_zero_shots_confusions_and_recall() -> None:
    from pixelforge.metrics.clip import evaluate_clip

    model = tiny_clip(targets={"color": 2},
                      zero_shot={"color": {"classes": ["red", "blue"], "templates": ["a {} shape"]}},
                      zero_shot_joint={"prompts": ["a red shape", "a blue shape"], "labels": {"color": [0, 1]}}).eval()
    dataset = [{"image": torch.full((3, 16, 16), float(i % 2)), "caption": ["a red shape", "a blue shape"][i % 2],
                "color": i % 2} for i in range(6)]
    results, matrices = evaluate_clip(model, dataset, batch_size=4)
    assert {"zero_shot/color", "zero_shot_joint/color", "image_to_text_R@1", "text_to_image_R@10"} <= set(results)
    assert matrices["color"].shape == (2, 2) and int(matrices["color"].sum()) == 6
