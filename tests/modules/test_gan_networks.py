"""DCGAN and ResNet generators/discriminators: shapes, conditioning, spectral norm."""

from __future__ import annotations

import pytest
import torch

from pixelforge.modules.gan import DCGANDiscriminator, DCGANGenerator, ResNetDiscriminator, ResNetGenerator


@pytest.mark.parametrize("num_classes", [None, 3])
@pytest.mark.parametrize("image_size", [16, 32])
def test_shapes(image_size: int, num_classes: int | None) -> None:
    y = torch.tensor([0, 2]) if num_classes else None
    z = torch.randn(2, 8)
    pairs = [(DCGANGenerator(8, 3, image_size, 4, num_classes),
              DCGANDiscriminator(3, image_size, 4, num_classes)),
             (ResNetGenerator(8, 3, image_size, 8, num_classes),
              ResNetDiscriminator(3, image_size, 8, num_classes, extra_blocks=1))]
    for generator, discriminator in pairs:
        images = generator(z, y)
        assert images.shape == (2, 3, image_size, image_size) and images.abs().max() <= 1
        assert discriminator(images, y).shape == (2,)


def test_bad_image_size() -> None:
    with pytest.raises(ValueError, match="image_size must be 4 times a power of two.*got 24"):
        DCGANGenerator(image_size=24)
    with pytest.raises(ValueError, match="image_size must be 8 times a power of two.*got 8"):
        ResNetDiscriminator(image_size=8)


def test_projection_discriminator_uses_the_label() -> None:
    torch.manual_seed(0)
    discriminator = DCGANDiscriminator(1, 16, 4, num_classes=3, batch_norm=False)
    x = torch.randn(1, 1, 16, 16).expand(3, -1, -1, -1)
    out = discriminator(x, torch.tensor([0, 1, 2]))
    assert len(out.unique()) == 3  # same image, three labels, three scores
    with pytest.raises(ValueError, match="class-conditional.*pass labels"):
        discriminator(x)


def test_conditional_generators_use_the_label() -> None:
    z = torch.randn(1, 8).expand(2, -1)
    for generator in (DCGANGenerator(8, 1, 16, 4, num_classes=3), ResNetGenerator(8, 1, 16, 8, num_classes=3)):
        for module in generator.modules():  # conditional BN starts as plain BN: give the classes distinct scales
            if isinstance(getattr(module, "scale", None), torch.nn.Linear):
                torch.nn.init.normal_(module.scale.weight, 0.0, 0.5)
        generator.eval()
        a, b = generator(z, torch.tensor([0, 1]))
        assert not torch.allclose(a, b)


@pytest.mark.parametrize("make", [lambda: DCGANDiscriminator(1, 16, 8, num_classes=3, batch_norm=False,
                                                              spectral_norm=True),
                                  lambda: ResNetDiscriminator(1, 16, 8, num_classes=3)])
def test_spectral_norm_gives_unit_top_singular_value(make) -> None:
    torch.manual_seed(0)
    discriminator = make()
    for _ in range(3):  # a few power iterations (one per training forward)
        discriminator(torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0]))
    layers = [m for m in discriminator.modules() if hasattr(m, "parametrizations")]
    assert len(layers) >= 4
    for layer in layers:
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.05)
