"""CLIP score is Hessel et al.'s definition: 100 x max(cos, 0), averaged over image-prompt pairs."""

from __future__ import annotations

import math

import pytest
import torch

from pixelforge.metrics.clip import clip_score
from pixelforge.protocols import AlignsText


class Toy:
    """Images are their own embeddings (flattened, normalised); a prompt names an angle in degrees."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(images.flatten(1), dim=1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        angles = torch.tensor([math.radians(float(t)) for t in texts])
        return torch.stack([angles.cos(), angles.sin()], dim=1)


def test_clip_score_is_hessels_definition() -> None:
    toy = Toy()
    assert isinstance(toy, AlignsText)
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])[:, :, None, None]
    # cos 60° = 0.5; cos 180° = -1 counts 0; the third image is at 90° as its prompt says: cos 1
    assert clip_score(toy, images, ["60", "180", "90"], batch_size=2) == pytest.approx(100 * (0.5 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        clip_score(toy, images, ["60", "180"])
