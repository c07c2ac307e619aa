"""Behaviour tests for the diffusion U-Net, its conditioning embeddings and the cross-attention transformer."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from pixelforge.modules.embeddings import position_embedding, timestep_embedding
from pixelforge.modules.unet import UNetModel

TINY: dict[str, Any] = {"model_channels": 16, "num_groups": 8, "channel_mult": (1, 2), "num_res_blocks": 1}


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Run these tiny models on one thread: on shared CPUs, intra-op threads of small convs mostly wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_unet(**overrides: Any) -> UNetModel:
    """A 2-level, 16-channel U-Net on 3-channel images; ``overrides`` replace any constructor argument."""
    return UNetModel(**{"in_channels": 3, "out_channels": 3, "attention_resolutions": (2,), **TINY, **overrides})


def randomize(model: nn.Module, std: float = 0.1) -> nn.Module:
    """Add noise to every parameter so zero-initialised branches carry signal (and gradient) in the test."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


def inputs(batch: int = 2, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and integer timesteps."""
    return torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))


@pytest.mark.parametrize(
    "config,size",
    [
        ({}, 8),
        ({"channel_mult": (1, 2, 2), "num_res_blocks": 3, "attention_resolutions": (1, 4)}, 16),
        ({"resblock_updown": True, "use_scale_shift_norm": False, "num_res_blocks": 2}, 8),
        ({"channel_mult": (1, 1, 2), "resblock_updown": True, "conv_resample": False, "num_head_channels": 8}, 16),
        ({"channel_mult": (2,), "attention_resolutions": (), "out_channels": 6, "dropout": 0.1}, 8),
    ],
)
def test_output_shape(config: dict[str, Any], size: int) -> None:
    torch.manual_seed(0)
    model = randomize(tiny_unet(**config))
    x, t = inputs(size=size)
    out = model(x, t)
    assert out.shape == (2, config.get("out_channels", 3), size, size)
    assert torch.isfinite(out).all()


def test_fresh_unet_outputs_exactly_zero() -> None:
    # Every residual branch and the output conv start at zero: a new denoiser predicts 0 (the mean of the noise).
    torch.manual_seed(0)
    x, t = inputs()
    assert torch.equal(tiny_unet(num_classes=10)(x, t), torch.zeros_like(x))


def test_scalar_float_timestep_broadcasts() -> None:
    torch.manual_seed(0)
    model = randomize(tiny_unet()).eval()
    x, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor(17.0)), model(x, torch.tensor([17, 17])))


def test_class_labels_condition_output_and_none_means_null() -> None:
    torch.manual_seed(0)
    model = randomize(tiny_unet(num_classes=10)).eval()
    assert model.num_classes == (10,)
    x, t = inputs()
    null = model.null_labels(2)
    assert null.tolist() == [10, 10]
    with torch.no_grad():
        out_a = model(x, t, torch.tensor([1, 2]))
        out_b = model(x, t, torch.tensor([3, 4]))
        torch.testing.assert_close(model(x, t), model(x, t, null))
    assert (out_a - out_b).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_multi_head_labels() -> None:
    torch.manual_seed(0)
    model = randomize(tiny_unet(num_classes=[3, 7])).eval()
    assert model.num_classes == (3, 7)
    x, t = inputs()
    assert model.null_labels(2).tolist() == [[3, 7], [3, 7]]
    with torch.no_grad():
        out = model(x, t, torch.tensor([[0, 6], [2, 1]]))
        changed_second_head = model(x, t, torch.tensor([[0, 5], [2, 0]]))
        torch.testing.assert_close(model(x, t), model(x, t, model.null_labels(2)))
    assert (out - changed_second_head).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    with pytest.raises(ValueError, match=r"\(2,\).*\(3, 7\)"):
        model(x, t, torch.tensor([0, 1]))


def test_cross_attention_uses_context_and_ignores_masked_tokens() -> None:
    torch.manual_seed(0)
    model = randomize(tiny_unet(context_dim=12, transformer_depth=2)).eval()
    x, t = inputs()
    context = torch.randn(2, 5, 12)
    mask = torch.tensor([[True, True, True, False, False], [True, True, True, True, False]])
    masked_changed, kept_changed = context.clone(), context.clone()
    masked_changed[0, 3:] = torch.randn(2, 12)
    masked_changed[1, 4:] = torch.randn(1, 12)
    kept_changed[:, 0] = torch.randn(2, 12)
    with torch.no_grad():
        out = model(x, t, context=context, context_mask=mask)
        torch.testing.assert_close(model(x, t, context=masked_changed, context_mask=mask), out, atol=1e-6, rtol=0)
        assert (model(x, t, context=kept_changed, context_mask=mask) - out).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        assert (model(x, t, context=torch.randn(2, 5, 12)) - out).abs().amax() > 1e-4
    with pytest.raises(ValueError, match="context missing but context_dim is 12"):
        model(x, t)


@pytest.mark.parametrize("context_dim", [None, 8])
def test_gradient_checkpointing_matches_plain(context_dim: int | None) -> None:
    torch.manual_seed(0)
    plain = randomize(tiny_unet(dropout=0.1, context_dim=context_dim)).train()
    checkpointed = tiny_unet(dropout=0.1, context_dim=context_dim, use_checkpoint=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x, t = inputs()
    context = None if context_dim is None else torch.randn(2, 3, context_dim)
    results = []
    for model in (plain, checkpointed):
        calls = []
        model.middle_block[0].register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        torch.manual_seed(1)  # same dropout masks; checkpoint replays the RNG state on recomputation
        out = model(x, t, context=context)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad for p in model.parameters()], len(calls)))
    (out_a, grads_a, calls_a), (out_b, grads_b, calls_b) = results
    assert (calls_a, calls_b) == (1, 2), "the checkpointed ResBlock should run again during backward"
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=1e-5)
    for grad_a, grad_b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(grad_a, grad_b, atol=1e-5, rtol=1e-5)


def test_timestep_embedding_matches_closed_form() -> None:
    t = torch.tensor([0, 1, 250, 999])
    dim = 7  # odd: three cos, three sin, one zero column
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim)
    for row, step in enumerate(t.tolist()):
        freqs = [10000 ** (-i / 3) for i in range(3)]
        expected = [math.cos(step * f) for f in freqs] + [math.sin(step * f) for f in freqs] + [0.0]
        torch.testing.assert_close(emb[row], torch.tensor(expected), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(timestep_embedding(t.float(), dim), emb)


def test_position_embedding_matches_closed_form() -> None:
    emb = position_embedding(2, 3, 10)  # two frequencies per sin/cos and axis, two zero columns
    assert emb.shape == (6, 10)
    freqs = [1.0, 10000 ** -0.5]
    for index in range(6):
        row, col = divmod(index, 3)
        expected = [f(a * k) for a in (row, col) for f in (math.sin, math.cos) for k in freqs] + [0.0, 0.0]
        torch.testing.assert_close(emb[index], torch.tensor(expected), atol=1e-6, rtol=1e-5)


def test_transformer_pos_embed_tells_positions_apart() -> None:
    """Without positions a spatially constant input stays constant through the transformers (1x1 convs, attention
    over identical tokens); with them the transformers' output differs from place to place."""
    torch.manual_seed(0)
    context = torch.randn(1, 4, 12)
    spread = []
    for pos_embed in (False, True):
        model = randomize(tiny_unet(context_dim=12, transformer_pos_embed=pos_embed)).eval()
        block = model.middle_block[1]
        with torch.no_grad():
            out = block(torch.randn(1, 1, 1, 1).expand(1, block.norm.num_channels, 4, 4), context)
        spread.append((out - out[..., :1, :1]).abs().amax().item())
    assert spread[0] < 1e-5 < 1e-2 < spread[1]


def test_invalid_arguments_raise_with_values() -> None:
    with pytest.raises(ValueError, match=r"num_groups 8 .*\[12, 24\].*does not divide \[12\]"):
        UNetModel(3, 3, model_channels=12, channel_mult=(1, 2), num_groups=8)
    with pytest.raises(ValueError, match="num_head_channels 6"):
        tiny_unet(num_head_channels=6)
    model = tiny_unet()
    x, t = inputs()
    with pytest.raises(ValueError, match=r"y of shape \(2,\) given but num_classes is None"):
        model(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_classes is None"):
        model.null_labels(2)
    with pytest.raises(ValueError, match=r"\(7, 7\) must be divisible by 2"):
        model(torch.randn(1, 3, 7, 7), t[:1])
    with pytest.raises(ValueError, match="context given but context_dim is None"):
        model(x, t, context=torch.randn(2, 3, 4))


def test_tiny_unet_overfits_fixed_batch() -> None:
    torch.manual_seed(0)
    model = tiny_unet().train()
    x_t, t = inputs(batch=4)
    target = torch.randn_like(x_t)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = (model(x_t, t) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_ddpm_cifar10_parameter_count() -> None:
    # The DDPM paper's CIFAR-10 network (Ho et al. 2020) reports 35.7M parameters; built on meta, no memory.
    with torch.device("meta"):
        model = UNetModel(
            3, 3, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(2,),
            dropout=0.1, use_scale_shift_norm=False, num_heads=1,
        )  # fmt: skip
    print(f"DDPM CIFAR-10 U-Net: {sum(p.numel() for p in model.parameters()):,} parameters (paper: 35.7M)")


def test_upcast_attention_attends_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """SD 2.x's fp32 attention: reduced-precision queries are attended in float32 and come back in their dtype."""
    from pixelforge.modules import attention

    seen: list[torch.dtype] = []
    sdpa = attention.F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda q, k, v, **kwargs: seen.append(q.dtype) or sdpa(q, k, v, **kwargs))
    x = torch.randn(1, 300, 16).to(torch.bfloat16)  # more keys than the explicit CPU path takes: SDPA
    out = attention.attend(x, x, x, heads=2, upcast=True)
    assert out.dtype == torch.bfloat16 and seen == [torch.float32]
    attention.attend(x, x, x, heads=2)
    assert seen[-1] == torch.bfloat16
    plain = UNetModel(4, 4, 32, (1, 2), 1, (1,), num_groups=8, context_dim=8)
    upcast = UNetModel(4, 4, 32, (1, 2), 1, (1,), num_groups=8, context_dim=8, upcast_attention=True)
    upcast.load_state_dict(plain.state_dict())
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([5]), torch.randn(1, 3, 8)
    assert torch.equal(plain(x, t, context=c), upcast(x, t, context=c))  # a no-op in float32
