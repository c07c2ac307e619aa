"""The conditioner: embedders read their keys, drop at their own rate to their unconditional value, and feed the
U-Net's context / y / concat inputs; bad set-ups fail with a message naming what is wrong."""

from __future__ import annotations

import pytest
import torch

from pixelforge.conditioning import Conditioner, Embedder, Labels, SpatialMap
from pixelforge.modules.encoders import ClassEmbedder, TransformerTextEncoder, WordTokenizer

WORDS = ["a", "red", "blue", "circle", "square"]


def text(ucg_rate: float = 0.0) -> Embedder:
    return Embedder(TransformerTextEncoder(WordTokenizer(WORDS, max_length=6), dim=8, depth=1, heads=2), "caption",
                    ucg_rate)


def test_each_embedder_drops_at_its_own_rate_to_its_unconditional_value() -> None:
    conditioner = Conditioner(caption=text(0.3), label=Embedder(Labels(10), "label", 0.6))
    torch.manual_seed(0)
    raw = conditioner.drop({"caption": ["a red circle"] * 4000, "label": torch.full((4000,), 7)})
    assert abs(sum(p == "" for p in raw["caption"]) / 4000 - 0.3) < 0.03
    assert set(raw["caption"]) == {"", "a red circle"} and set(raw["label"].tolist()) == {7, 10}
    assert abs((raw["label"] == 10).float().mean().item() - 0.6) < 0.03
    kept = Conditioner(caption=text(0.0)).drop({"caption": ["a red circle"] * 10})
    assert kept["caption"] == ["a red circle"] * 10


def test_outputs_feed_the_unet_inputs_and_maps_are_kept_unconditionally() -> None:
    conditioner = Conditioner(caption=text(), shape=Embedder(Labels([3, 2]), ["shape", "size"]),
                              mask=Embedder(SpatialMap(1), "mask"))
    batch = {"caption": ["a red circle", "a blue square"], "shape": torch.tensor([0, 2]),
             "size": torch.tensor([1, 0]), "mask": torch.rand(2, 1, 4, 4)}
    raw = conditioner.read(batch)
    assert raw["shape"].tolist() == [[0, 1], [2, 0]]  # several label keys stacked B,K
    cond = conditioner(raw)
    assert cond["context"].shape == (2, 6, 8) and cond["context_mask"].dtype == torch.bool
    assert cond["y"].tolist() == [[0, 1], [2, 0]] and torch.equal(cond["concat"], batch["mask"])
    null = conditioner.unconditional(raw)
    assert null["caption"] == ["", ""] and null["shape"].tolist() == [[3, 2], [3, 2]]
    assert null["mask"] is raw["mask"]  # no unconditional value: both guidance passes see the map
    assert conditioner.input_keys == ["caption", "shape", "size", "mask"] and conditioner.text_key == "caption"
    assert conditioner.label_heads == {"shape": 3, "size": 2} and conditioner.guided


def test_sampling_fills_missing_conditions_with_their_unconditional_value() -> None:
    conditioner = Conditioner(caption=text(), label=Embedder(Labels(4), "label"))
    raw = conditioner.read({"label": torch.tensor([1, 2, 3])}, count=3)
    assert raw["caption"] == ["", "", ""] and raw["label"].tolist() == [1, 2, 3]
    assert conditioner.read({}, count=2)["label"].tolist() == [4, 4]
    assert Conditioner(label=Embedder(ClassEmbedder(4, 8), "label")).label_heads == {"label": 4}  # class tokens
    assert not Conditioner().guided and Conditioner().text_key is None and Conditioner()({}) == {}


def test_bad_setups_fail_clearly() -> None:
    with pytest.raises(ValueError, match=r"several embedders feed the U-Net's \['context'\]"):
        Conditioner(caption=text(), label=Embedder(ClassEmbedder(4, 8), "label"))
    with pytest.raises(ValueError, match="ucg_rate=0.1: SpatialMap has no unconditional value"):
        Embedder(SpatialMap(1), "mask", 0.1)
    with pytest.raises(ValueError, match=r"ucg_rate must be a probability in \[0, 1\], got 1.5"):
        Embedder(Labels(3), "label", 1.5)
    with pytest.raises(ValueError, match="stacks 2 label keys; the encoder needs as many class heads"):
        Embedder(Labels(3), ["shape", "size"])
    with pytest.raises(ValueError, match="Linear cannot condition a U-Net"):
        Embedder(torch.nn.Linear(2, 2), "x")
    with pytest.raises(KeyError, match=r"needs the batch key\(s\) \['caption'\]; the batch has \['image'\]"):
        Conditioner(caption=text()).read({"image": torch.zeros(1)})
    with pytest.raises(ValueError, match="num_classes must be a positive class count"):
        Labels([3, 0])
    with pytest.raises(ValueError, match=r"must be B,1,H,W; got \(2, 3, 4, 4\)"):
        SpatialMap(1)(torch.zeros(2, 3, 4, 4))
