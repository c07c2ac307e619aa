"""The optimised U-Net blocks against straightforward reference implementations, on random inputs and weights."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixelforge.modules.attention import (
    EXPLICIT_MAX_KEYS,
    CrossTransformerBlock,
    MultiHeadCrossAttention,
    MultiHeadSelfAttention,
    explicit_attention,
    use_explicit_attention,
)
from pixelforge.modules.embeddings import TimestepEmbedding, timestep_embedding
from pixelforge.modules.unet import ResBlock, SpatialTransformer, UNetModel


@pytest.fixture(autouse=True)
def seeded_single_thread() -> Iterator[None]:
    """Seed every test; one thread, as small CPU ops mostly wait on others."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize(model: nn.Module) -> nn.Module:
    """Perturb every parameter, so zero-initialised branches carry signal."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def ref_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Head by head in float64: softmax(q kᵀ / √d) v over (B,N,D) tokens; rows with every key masked give 0."""
    d = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        qh, kh, vh = (t[..., h * d:(h + 1) * d].double() for t in (q, k, v))
        scores = qh @ kh.transpose(1, 2) / math.sqrt(d)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        outs.append(scores.softmax(-1).nan_to_num(0.0) @ vh)
    return torch.cat(outs, -1).to(q.dtype)


def ref_self_attention(m: MultiHeadSelfAttention, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    q, k, v = (F.linear(x, w, b) for w, b in zip(m.qkv.weight.chunk(3), m.qkv.bias.chunk(3), strict=True))
    return m.proj(ref_attention(q, k, v, m.heads, mask))


def ref_cross_attention(m: MultiHeadCrossAttention, x: torch.Tensor, context: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    k, v = (F.linear(context, w, b) for w, b in zip(m.kv.weight.chunk(2), m.kv.bias.chunk(2), strict=True))
    return m.proj(ref_attention(m.q(x), k, v, m.heads, mask))


def ref_cross_block(m: CrossTransformerBlock, x: torch.Tensor, context: torch.Tensor,
                    mask: torch.Tensor | None) -> torch.Tensor:
    x = x + ref_self_attention(m.self_attn, m.norm1(x))
    x = x + ref_cross_attention(m.cross_attn, m.norm2(x), context, mask)
    a, gate = m.mlp[0].proj(m.norm3(x)).chunk(2, dim=-1)
    return x + m.mlp[2](a * F.gelu(gate))


def ref_spatial_transformer(m: SpatialTransformer, x: torch.Tensor, context: torch.Tensor,
                            mask: torch.Tensor | None) -> torch.Tensor:
    """GroupNorm, 1x1 conv, flatten to tokens, blocks, back to a map, 1x1 conv, residual: the CompVis layout."""
    b, c, h, w = x.shape
    tokens = m.proj_in(m.norm(x)).flatten(2).transpose(1, 2)
    for block in m.blocks:
        tokens = ref_cross_block(block, tokens, context, mask)
    return x + m.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))


def ref_resblock(m: ResBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    h = m.in_conv(m.resample(F.silu(m.in_norm(x))))
    scale, shift = m.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
    return m.skip(m.resample(x)) + m.out_conv(F.silu(m.out_norm(h) * (1 + scale) + shift))


def key_mask(batch: int, keys: int) -> torch.Tensor:
    """Random keep-mask whose last row hides every key (SDPA's convention: that row's output is 0)."""
    mask = torch.rand(batch, keys) > 0.3
    mask[0, 0] = True
    mask[-1] = False
    return mask


def assert_same_forward_and_grads(module: nn.Module, fn, ref, inputs: list[torch.Tensor], **tol: float) -> None:
    """``fn(*inputs)`` equals ``ref(*inputs)``, and so do the gradients of a random projection of each."""
    grads = []
    for f in (fn, ref):
        module.zero_grad()
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        out = f(*leaves)
        (out * torch.randn_like(out, generator=torch.Generator().manual_seed(1))).sum().backward()
        grads.append((out.detach(), [t.grad for t in leaves if t.grad is not None],
                      [p.grad.clone() for p in module.parameters()]))
    (out, input_grads, param_grads), (ref_out, ref_input_grads, ref_param_grads) = grads
    torch.testing.assert_close(out, ref_out, **tol)
    for mine, theirs in zip(input_grads + param_grads, ref_input_grads + ref_param_grads, strict=True):
        torch.testing.assert_close(mine, theirs, **tol)


@pytest.mark.parametrize("masked", [False, True])
def test_explicit_attention_equals_sdpa(masked: bool) -> None:
    q, k, v = torch.randn(3, 2, 5, 8), torch.randn(3, 2, 7, 8), torch.randn(3, 2, 7, 8)
    mask = key_mask(3, 7)[:, None, None, :] if masked else None
    ours = explicit_attention(q, k, v, mask)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert torch.isfinite(ours).all()


def test_explicit_attention_is_used_for_short_reduced_precision_cpu_attention_only() -> None:
    short, long = torch.empty(1, 1, 4, 8), torch.empty(1, 1, EXPLICIT_MAX_KEYS + 1, 8)
    assert use_explicit_attention(short.bfloat16(), short.bfloat16())
    assert not use_explicit_attention(short, short)
    assert not use_explicit_attention(long.bfloat16(), long.bfloat16())


@pytest.mark.parametrize("masked", [False, True])
def test_attention_modules_equal_reference(masked: bool) -> None:
    x, context = torch.randn(3, 6, 16), torch.randn(3, 5, 12)
    mask = key_mask(3, 5) if masked else None
    self_attn = randomize(MultiHeadSelfAttention(16, 4))
    torch.testing.assert_close(self_attn(x), ref_self_attention(self_attn, x))
    cross = randomize(MultiHeadCrossAttention(16, 12, 4))
    assert_same_forward_and_grads(cross, lambda x, c: cross(x, c, mask),
                                  lambda x, c: ref_cross_attention(cross, x, c, mask), [x, context])


def test_bf16_autocast_attention_stays_close_to_float64_reference() -> None:
    """40 self-attention keys take the bf16 softmax, 4 cross-attention keys the float32 one."""
    x, context = torch.randn(2, 40, 32), torch.randn(2, 4, 24)
    block = randomize(CrossTransformerBlock(32, 4, 24)).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x, context).float()
    torch.testing.assert_close(out, ref_cross_block(block, x, context, None), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("masked", [False, True])
def test_spatial_transformer_equals_reference(masked: bool) -> None:
    model = randomize(SpatialTransformer(16, 4, context_dim=12, depth=2, num_groups=8))
    x, context = torch.randn(2, 16, 4, 6), torch.randn(2, 5, 12)
    mask = key_mask(2, 5) if masked else None
    assert_same_forward_and_grads(model, lambda x, c: model(x, c, mask),
                                  lambda x, c: ref_spatial_transformer(model, x, c, mask), [x, context])


@pytest.mark.parametrize("resample", [{}, {"up": True}, {"down": True}, {"out_channels": 24}])
def test_resblock_equals_reference(resample: dict) -> None:
    model = randomize(ResBlock(16, 32, num_groups=8, **resample))
    x, emb = torch.randn(2, 16, 8, 8), torch.randn(2, 32)
    assert_same_forward_and_grads(model, model, lambda x, e: ref_resblock(model, x, e), [x, emb])


def test_timestep_embedding_caches_float32_frequencies() -> None:
    embed = TimestepEmbedding(33, 16)
    t = torch.randint(0, 1000, (5,))
    torch.testing.assert_close(embed(t), embed.mlp(timestep_embedding(t, 33)))
    embed.double()
    assert embed.freqs.dtype == torch.float32
    torch.testing.assert_close(embed(t), embed.mlp(timestep_embedding(t, 33).double()))
    assert "freqs" not in str(list(embed.state_dict()))


def test_text_unet_state_dict_is_parameters_only_with_conv_projections() -> None:
    """Checkpoints keep loading: no new buffers, and the transformer projections keep their 1x1 conv shapes."""
    unet = UNetModel(4, 4, 32, (1, 2), 1, (1, 2), 2, num_groups=8, context_dim=16)
    state = unet.state_dict()
    assert set(state) == {name for name, _ in unet.named_parameters()}
    assert state["input_blocks.1.1.proj_in.weight"].shape == (32, 32, 1, 1)
    assert state["input_blocks.1.1.proj_out.weight"].shape == (32, 32, 1, 1)
