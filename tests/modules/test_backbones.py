"""Behaviour tests for the classifier backbones and the shared self-attention block."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

from pixelforge.modules.attention import MultiHeadSelfAttention, TransformerBlock
from pixelforge.modules.cnn import SmallCNN
from pixelforge.modules.mlp import MLP
from pixelforge.modules.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from pixelforge.modules.vit import ViT

Factory = Callable[[int, int], nn.Module]

# Tiny configurations of every backbone, built from (in_channels, image_size).
BACKBONES: dict[str, Factory] = {
    "mlp": lambda c, s: MLP(c, s, hidden_dims=(32, 16)),
    "mlp_no_norm": lambda c, s: MLP(c, s, hidden_dims=(24,), norm=False, dropout=0.1),
    "cnn": lambda c, s: SmallCNN(c, s, channels=(4, 8), hidden_dim=16),
    "cnn_no_bn": lambda c, s: SmallCNN(c, s, channels=(4, 8, 8, 8), convs_per_stage=1, batch_norm=False),
    "resnet_imagenet": lambda c, s: ResNet(c, s, layers=(1, 1, 1, 1), width=4),
    "resnet_cifar": lambda c, s: ResNet(c, s, block="bottleneck", layers=(1, 1), width=4, stem="cifar"),
    "resnet18": lambda c, s: resnet18(c, s, width=2),
    "vit_cls": lambda c, s: ViT(c, s, patch_size=4, dim=16, depth=2, heads=2),
    "vit_mean": lambda c, s: ViT(c, s, patch_size=4, dim=16, depth=1, heads=4, pool="mean", dropout=0.1),
}
EXPECTED_FEATURES = {
    "mlp": 16,
    "mlp_no_norm": 24,
    "cnn": 16,
    "cnn_no_bn": 256,
    "resnet_imagenet": 32,
    "resnet_cifar": 32,
    "resnet18": 16,
    "vit_cls": 16,
    "vit_mean": 16,
}
SHAPES = [(1, 28), (3, 16)]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("in_channels,image_size", SHAPES)
@pytest.mark.parametrize("name", BACKBONES)
def test_output_shape_matches_out_features(name: str, in_channels: int, image_size: int) -> None:
    model = BACKBONES[name](in_channels, image_size).eval()
    x = torch.rand(3, in_channels, image_size, image_size) * 2 - 1
    with torch.no_grad():
        out = model(x)
    assert model.out_features == EXPECTED_FEATURES[name]
    assert isinstance(model.out_features, int)
    assert out.shape == (3, model.out_features)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", BACKBONES)
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = BACKBONES[name](3, 16).train()
    out = model(torch.rand(4, 3, 16, 16) * 2 - 1)
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize(
    "factory,pretrained_factory",
    [(resnet18, torchvision.models.resnet18), (resnet50, torchvision.models.resnet50)],
)
def test_resnet_parameter_count_matches_torchvision(
    factory: Callable[..., ResNet], pretrained_factory: Callable[..., nn.Module]
) -> None:
    reference = pretrained_factory(weights=None)
    expected = n_params(reference) - n_params(reference.fc)
    model = factory(3, 224)
    assert n_params(model) == expected
    assert model.out_features == reference.fc.in_features


def test_resnet_standard_depths() -> None:
    expected = {
        resnet18: (BasicBlock, 8, 64),
        resnet34: (BasicBlock, 16, 64),
        resnet50: (Bottleneck, 16, 256),
    }
    for factory, (block, n_blocks, features) in expected.items():
        model = factory(1, 28, width=8)
        blocks = [m for m in model.modules() if isinstance(m, BasicBlock | Bottleneck)]
        assert len(blocks) == n_blocks and all(type(b) is block for b in blocks)
        assert model.out_features == features


def test_bottleneck_expands_features_by_four() -> None:
    basic = ResNet(3, 32, block="basic", width=4)
    bottleneck = ResNet(3, 32, block="bottleneck", width=4)
    assert basic.out_features == 4 * 8
    assert bottleneck.out_features == 4 * 8 * 4
    x = torch.randn(2, 3, 32, 32)
    assert bottleneck(x).shape == (2, 128)


def test_zero_init_residual_makes_blocks_identity_plus_relu() -> None:
    model = ResNet(3, 16, layers=(1,), width=4, stem="cifar").eval()
    block = model.body[3]
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))
    assert ResNet(3, 16, width=4, zero_init_residual=False).body[4].residual[-1].weight.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"block": "wide"}, "'wide'.*'basic', 'bottleneck'"),
        ({"stem": "tiny"}, "'tiny'.*'imagenet', 'cifar'"),
    ],
)
def test_resnet_rejects_unknown_options(kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ResNet(3, 32, **kwargs)


def test_vit_rejects_invalid_sizes() -> None:
    with pytest.raises(ValueError, match="image_size 30 .*patch_size 4"):
        ViT(3, 30, patch_size=4)
    with pytest.raises(ValueError, match="dim 20 .*heads 3"):
        ViT(3, 32, dim=20, heads=3)
    with pytest.raises(ValueError, match="'max'"):
        ViT(3, 32, pool="max")


def reference_attention(
    attn: MultiHeadSelfAttention, x: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Explicit per-head softmax(QK^T / sqrt(d)) V with the module's own weights."""
    dim = x.shape[-1]
    d = dim // attn.heads
    q, k, v = attn.qkv(x).split(dim, dim=-1)
    heads = []
    for h in range(attn.heads):
        sl = slice(h * d, (h + 1) * d)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        heads.append(scores.softmax(dim=-1) @ v[..., sl])
    return attn.proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("use_mask", [False, True])
def test_attention_matches_reference(use_mask: bool) -> None:
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(dim=24, heads=3).eval()
    x = torch.randn(2, 7, 24)
    mask = None
    if use_mask:
        mask = torch.rand(2, 7) > 0.4
        mask[:, 0] = True
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask), reference_attention(attn, x, mask), atol=1e-5, rtol=1e-5)


def test_masked_keys_do_not_change_kept_outputs() -> None:
    torch.manual_seed(0)
    block = TransformerBlock(dim=16, heads=2).eval()
    x = torch.randn(1, 6, 16)
    mask = torch.tensor([[True, True, True, True, False, False]])
    changed = x.clone()
    changed[:, 4:] = torch.randn(1, 2, 16)
    with torch.no_grad():
        torch.testing.assert_close(block(x, mask)[:, :4], block(changed, mask)[:, :4])


def test_attention_rejects_indivisible_heads() -> None:
    with pytest.raises(ValueError, match="dim 10 .*heads 4"):
        MultiHeadSelfAttention(10, 4)


def test_small_cnn_overfits_tiny_batch() -> None:
    torch.manual_seed(0)
    backbone = SmallCNN(1, 16, channels=(8, 16), hidden_dim=32, dropout=0.0)
    model = nn.Sequential(backbone, nn.Linear(backbone.out_features, 4)).train()
    x = torch.rand(16, 1, 16, 16) * 2 - 1
    y = torch.randint(0, 4, (16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    assert losses[-1] < 0.1 * losses[0]
    assert accuracy == 1.0
