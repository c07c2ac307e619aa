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


def test_a_text_to_image_evaluation_adds_the_clip_score_of_its_samples(tmp_path) -> None:
    """evaluate_samples with a CLIP: each sample scored against the prompt it was drawn for, and FID on CLIP."""
    from types import SimpleNamespace

    from pixelforge.metrics.generation import evaluate_samples

    class Prompted(torch.nn.Module):
        """Samples the angle its prompt names, as a 2-pixel image: a perfect text-to-image model for ``Toy``."""

        conditioner = SimpleNamespace(text_key="caption")

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def sample(self, n, conditions, generator=None, **kwargs):
            return Toy().encode_text(conditions["caption"])[:, :, None, None]

    class Features(torch.nn.Flatten):
        name = "flatten"  # what the real-feature cache is keyed by

    dataset = [{"image": Toy().encode_text([a])[0][:, None, None], "caption": a} for a in ("10", "80", "130", "200")]
    results = evaluate_samples(Prompted(), Features(), dataset, "toy", n_samples=8, batch_size=4,
                               cache_dir=tmp_path, kid_subset_size=4, clip=Toy())
    assert results["clip_score"] == pytest.approx(100.0)
    assert results["clip_fid"] >= 0
