"""First-stage blocks: encoder/decoder shapes, DiagonalGaussian closed forms, the vector quantiser, PatchGAN."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pixelforge.modules.distributions import DiagonalGaussian
from pixelforge.modules.first_stage import Decoder, Encoder, downsample_factor
from pixelforge.modules.patchgan import NLayerDiscriminator
from pixelforge.modules.quantize import VectorQuantizer

TINY = {"ch": 8, "num_res_blocks": 1, "z_channels": 3, "num_groups": 4}


@pytest.mark.parametrize("ch_mult", [(1,), (1, 2), (1, 2, 2), (1, 1, 2, 2)])
@pytest.mark.parametrize("double_z", [True, False])
def test_encoder_decoder_shapes(ch_mult: tuple[int, ...], double_z: bool) -> None:
    f = 2 ** (len(ch_mult) - 1)
    x = torch.randn(2, 3, 16, 16)
    h = Encoder(3, ch_mult=ch_mult, double_z=double_z, **TINY)(x)
    assert h.shape == (2, 6 if double_z else 3, 16 // f, 16 // f)
    assert Decoder(3, ch_mult=ch_mult, **TINY)(h[:, :3]).shape == x.shape


@pytest.mark.parametrize("patch_size", [2, 4])
def test_patches_fold_into_channels_and_back(patch_size: int) -> None:
    """patch_size p multiplies the factor by p, and no layer runs at full resolution: the first conv sees H/p."""
    x = torch.randn(2, 3, 16, 16)
    encoder = Encoder(3, ch_mult=(1, 2), patch_size=patch_size, **TINY)
    seen = []
    encoder.conv_in.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    h = encoder(x)
    f = downsample_factor((1, 2), patch_size)
    assert f == 2 * patch_size and h.shape == (2, 6, 16 // f, 16 // f)
    assert seen == [(2, 3 * patch_size**2, 16 // patch_size, 16 // patch_size)]
    assert Decoder(3, ch_mult=(1, 2), patch_size=patch_size, **TINY)(h[:, :3]).shape == x.shape


def test_bad_patch_size_is_named() -> None:
    with pytest.raises(ValueError, match="patch_size >= 1, got .*, 0"):
        Decoder(3, ch_mult=(1, 2), patch_size=0, **TINY)


def test_bad_widths_are_named() -> None:
    with pytest.raises(ValueError, match="not divisible by num_groups=32"):
        Encoder(3, ch=8, ch_mult=(1, 2))


def gaussian(seed: int = 0) -> DiagonalGaussian:
    g = torch.Generator().manual_seed(seed)
    return DiagonalGaussian(torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g))


def as_torch(d: DiagonalGaussian) -> Normal:
    return Normal(d.mean, d.std)


def test_kl_matches_torch_distributions() -> None:
    p, q = gaussian(0), gaussian(1)
    prior = Normal(torch.zeros_like(p.mean), torch.ones_like(p.mean))
    torch.testing.assert_close(p.kl(), kl_divergence(as_torch(p), prior).flatten(1).sum(1))
    torch.testing.assert_close(p.kl(q), kl_divergence(as_torch(p), as_torch(q)).flatten(1).sum(1))


def test_nll_matches_torch_distributions() -> None:
    p, x = gaussian(), torch.randn(3, 2, 4, 4)
    torch.testing.assert_close(p.nll(x), -as_torch(p).log_prob(x).flatten(1).sum(1))


def test_from_moments_splits_channels_and_mode_is_mean() -> None:
    moments = torch.randn(2, 8, 3, 3)
    d = DiagonalGaussian.from_moments(moments)
    assert torch.equal(d.mode(), moments[:, :4]) and torch.equal(d.logvar, moments[:, 4:])


def test_sample_mean_and_variance() -> None:
    d = DiagonalGaussian(torch.full((20000, 1, 1, 1), 1.5), torch.full((20000, 1, 1, 1), 2 * torch.tensor(0.5).log()))
    s = d.sample(torch.Generator().manual_seed(0))
    assert abs(s.mean().item() - 1.5) < 0.02 and abs(s.var().item() - 0.25) < 0.01
    assert torch.equal(s, d.sample(torch.Generator().manual_seed(0)))


def quantizer(**kwargs) -> VectorQuantizer:
    vq = VectorQuantizer(4, 2, **kwargs)
    vq.embedding.data = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    vq.embed_sum.copy_(vq.embedding.data)
    return vq


def test_quantiser_picks_nearest_code_and_reports_usage() -> None:
    vq = quantizer().eval()
    z = torch.tensor([[0.9, 0.1], [0.1, 0.8], [-0.2, 0.1], [1.2, -0.3]]).T.reshape(1, 2, 2, 2)
    quantized, _, info = vq(z)
    assert info["indices"].flatten().tolist() == [1, 2, 0, 1]
    torch.testing.assert_close(quantized, vq.lookup(info["indices"]))
    assert info["usage"].item() == 0.75
    torch.testing.assert_close(info["perplexity"], torch.tensor(2.0 ** 1.5))  # histogram 1/4, 1/2, 1/4


def test_straight_through_gradient_and_codebook_loss() -> None:
    vq = quantizer(beta=0.25)
    z = torch.tensor([[0.9, 0.1]]).T.reshape(1, 2, 1, 1).requires_grad_(True)
    quantized, loss, _ = vq(z)
    quantized.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # identity gradient through the quantiser
    z.grad = None
    loss.backward()
    assert z.grad.abs().sum() > 0 and vq.embedding.grad[1].abs().sum() > 0  # commitment and codebook terms


def test_ema_moves_assigned_codes_towards_their_vectors() -> None:
    vq = quantizer(ema_decay=0.5)
    assert not vq.embedding.requires_grad
    target = torch.tensor([0.8, 0.2])
    z = target.view(1, 2, 1, 1).repeat(1, 1, 2, 2)
    before = vq.embedding[1].clone()
    for _ in range(20):
        _, loss, _ = vq(z)
    assert (vq.embedding[1] - target).norm() < 0.05 < (before - target).norm()


def test_dead_codes_restart_on_batch_vectors() -> None:
    vq = quantizer(dead_threshold=0.5, usage_decay=0.5)
    z = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.2, 0.0], [1.1, 0.0]]).T.reshape(1, 2, 2, 2)
    vq(z)
    vq(z)  # code 3 at (5, 5) gets nothing: its usage EMA falls 1 -> 0.5 -> 0.25, below the threshold
    batch = z.permute(0, 2, 3, 1).reshape(-1, 2)
    assert (vq.embedding[3] == batch).all(1).any()
    assert vq.cluster_size[3] == 0.5


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_patchgan_gives_patch_logits(norm: str) -> None:
    d = NLayerDiscriminator(3, ndf=8, n_layers=2, norm=norm)
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 1, 6, 6)
