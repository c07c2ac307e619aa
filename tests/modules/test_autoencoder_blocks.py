"""ConvAutoencoder: code and output shapes for vector and spatial bottlenecks, 1 or 3 channels, 32 or 64 px."""

from __future__ import annotations

import pytest
import torch

from pixelforge.modules.autoencoder import ConvAutoencoder


@pytest.mark.parametrize(("channels", "size", "latent_dim", "code_shape"), [
    (1, 32, 2, (2,)), (1, 32, None, (4, 4, 4)), (3, 64, 16, (16,)), (3, 64, None, (4, 8, 8)),
])
def test_shapes(channels: int, size: int, latent_dim: int | None, code_shape: tuple[int, ...]) -> None:
    net = ConvAutoencoder(channels, size, channels=(8, 8, 16), latent_dim=latent_dim, latent_channels=4,
                          latent_moments=2, convs_per_stage=2)
    x = torch.randn(3, channels, size, size)
    assert net.latent_shape == code_shape
    code = net.encode(x)
    assert code.shape == (3, 2 * code_shape[0], *code_shape[1:])
    assert net.decode(code.chunk(2, dim=1)[0]).shape == x.shape
    assert net(x).shape == x.shape


def test_bad_sizes_are_named() -> None:
    with pytest.raises(ValueError, match="image_size=30"):
        ConvAutoencoder(1, 30, channels=(8, 16))
    with pytest.raises(ValueError, match="latent_moments"):
        ConvAutoencoder(1, 32, latent_moments=0)
