"""Zero-shot classification and retrieval on embeddings whose answer is known, and the zero-shot spec's checks."""

from __future__ import annotations

import pytest
import torch

from pixelforge.contrastive.zero_shot import (
    check_zero_shot,
    class_weights,
    confusion,
    prompts,
    retrieval_recall,
    zero_shot_predict,
)

COLORS = ["red", "green", "blue"]


def toy_text_encoder(texts: list[str]) -> torch.Tensor:
    """A 'text tower' that knows colour words: one axis per colour, plus a template-dependent nuisance axis."""
    out = torch.zeros(len(texts), 4)
    for i, text in enumerate(texts):
        for c, name in enumerate(COLORS):
            out[i, c] = float(name in text.split())
        out[i, 3] = 0.3 * len(text.split())
    return out


def test_zero_shot_recovers_the_class_a_toy_model_encodes() -> None:
    assert prompts(COLORS, ["a {} shape", "{}"])[1] == ["a green shape", "green"]
    weights = class_weights(toy_text_encoder, COLORS, ["a {} shape", "a shape in {}"])
    assert weights.shape == (3, 4) and torch.allclose(weights.norm(dim=1), torch.ones(3))
    labels = torch.tensor([2, 0, 1, 1, 0])
    images = torch.nn.functional.one_hot(labels, 4).float() + 0.1 * torch.rand(5, 4)
    predicted = zero_shot_predict(images, weights)
    assert torch.equal(predicted, labels)
    assert confusion(predicted, labels, 3).tolist() == [[2, 0, 0], [0, 2, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="takes the class name once"):
        prompts(COLORS, ["no slot"])


def test_retrieval_counts_identical_captions_as_one_text() -> None:
    captions = ["red", "green", "red", "blue"]
    texts = torch.eye(4)
    images = torch.tensor([[0, 0, 1.0, 0], [0.9, 0.3, 0, 0], [1.0, 0, 0, 0], [0, 0.2, 0, 1.0]])
    recall = retrieval_recall(images, texts, captions, ks=(1, 2))
    # image 0 (red) finds text 2, also "red": a hit; image 1 (green) finds "red" first and "green" second
    assert recall["image_to_text_R@1"] == 0.75 and recall["image_to_text_R@2"] == 1.0
    assert recall["text_to_image_R@1"] == 1.0  # "green" finds image 1, the greenest
    assert set(recall) == {"image_to_text_R@1", "image_to_text_R@2", "text_to_image_R@1", "text_to_image_R@2"}


def test_the_zero_shot_spec_is_checked_against_the_data() -> None:
    spec = {"color": {"classes": COLORS}}
    assert check_zero_shot(spec, {"color": 3})["color"]["templates"] == ["a photo of a {}", "a {}"]
    with pytest.raises(ValueError, match="'shade' is not one of the data's targets \\['color'\\]"):
        check_zero_shot({"shade": spec["color"]}, {"color": 3})
    with pytest.raises(ValueError, match="names 3 classes, the data has 4"):
        check_zero_shot(spec, {"color": 4})


def test_joint_zero_shot_reads_every_target_off_the_best_whole_prompt() -> None:
    from pixelforge.contrastive.zero_shot import check_joint, joint_predict
    from pixelforge.data.shapes import joint_prompts

    prompts = torch.eye(4)  # four whole prompts: (colour, size) = (0, 0), (0, 1), (1, 0), (1, 1)
    labels = {"color": torch.tensor([0, 0, 1, 1]), "size": torch.tensor([0, 1, 0, 1])}
    images = torch.tensor([[0.1, 0.9, 0, 0], [0, 0, 0.2, 1.0]])
    predicted = joint_predict(images, prompts, labels)
    assert predicted["color"].tolist() == [0, 1] and predicted["size"].tolist() == [1, 1]
    shapes = joint_prompts()
    assert len(shapes["prompts"]) == 210 and shapes["prompts"][0] == "a small red circle in the top left"
    assert check_joint(shapes, {"shape": 3, "color": 7, "size": 2, "position": 5})["labels"]["size"][:2] == [0, 0]
    with pytest.raises(ValueError, match="must give one class in \\[0, 1\\) for each of the 210 prompts"):
        check_joint(shapes, {"shape": 3, "color": 7, "size": 1, "position": 5})
