"""Diffusion U-Net after the OpenAI/CompVis design, with class labels and latent-diffusion cross-attention."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from pixelforge.modules.attention import CrossTransformerBlock, MultiHeadSelfAttention
from pixelforge.modules.embeddings import LabelEmbedding, TimestepEmbedding, position_embedding


def zero_init(module: nn.Module) -> nn.Module:
    """Zero every parameter so a residual branch (or the whole U-Net output) starts as exactly zero."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def tokenwise(layer: nn.Conv2d | nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv (or a linear layer) applied to (B,N,C_in) tokens as the linear layer it is: (B,N,C_out)."""
    return F.linear(tokens, layer.weight.flatten(1), layer.bias)


class Downsample(nn.Module):
    """Halve H and W by a stride-2 3x3 conv, or by 2x2 average pooling when ``use_conv`` is False; ``asymmetric``
    pads only right and bottom before an unpadded conv, as the first stages of CompVis and Stable Diffusion do."""

    def __init__(self, channels: int, use_conv: bool = True, asymmetric: bool = False) -> None:
        super().__init__()
        self.asymmetric = asymmetric and use_conv
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.asymmetric else 1)
        else:
            self.op = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B,C,H,W -> B,C,H/2,W/2."""
        return self.op(F.pad(x, (0, 1, 0, 1)) if self.asymmetric else x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour repetition, followed by a 3x3 conv when ``use_conv`` is True."""

    def __init__(self, channels: int, use_conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B,C,H,W -> B,C,2H,2W."""
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlock(nn.Module):
    """Residual conv block conditioned on an embedding (added, or as GroupNorm scale-shift); may up/downsample."""

    def __init__(
        self,
        channels: int,
        emb_dim: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        num_groups: int = 32,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_norm = nn.GroupNorm(num_groups, channels)
        if up:
            self.resample: nn.Module = Upsample(channels, use_conv=False)
        elif down:
            self.resample = Downsample(channels, use_conv=False)
        else:
            self.resample = nn.Identity()
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_norm = nn.GroupNorm(num_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply to ``x`` (B,C,H,W) under embedding ``emb`` (B,emb_dim)."""
        h = self.in_conv(self.resample(F.silu(self.in_norm(x))))
        x = self.resample(x)
        e = rearrange(self.emb_proj(emb), "b c -> b c 1 1")
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.out_norm(h), 1 + scale)
        else:
            h = self.out_norm(h + e)
        return self.skip(x) + self.out_conv(self.dropout(F.silu(h)))


class AttentionBlock(nn.Module):
    """Residual multi-head self-attention over the H·W positions of a feature map, zero-initialised output."""

    def __init__(self, channels: int, heads: int, num_groups: int = 32, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels, eps=norm_eps)
        self.attn = MultiHeadSelfAttention(channels, heads)
        zero_init(self.attn.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B,C,H,W -> B,C,H,W."""
        h = self.attn(rearrange(self.norm(x), "b c h w -> b (h w) c"))
        return x + rearrange(h, "b (h w) c -> b c h w", h=x.shape[2])


class SpatialTransformer(nn.Module):
    """Latent-diffusion transformer on a feature map: norm, 1x1 in, cross-attention blocks, zero-init 1x1 out.

    The 1x1 convs keep their conv weights (checkpoints load unchanged) but run as linears on the (B,HW,C) tokens:
    one matmul each instead of a convolution plus a layout change on either side. ``linear_proj`` makes them
    ``nn.Linear`` layers, as Stable Diffusion 2.x stores them (``use_linear_in_transformer``); SD also uses
    ``norm_eps`` 1e-6 and no q/k/v biases (``qkv_bias=False``); ``upcast`` attends in float32 (SD 2.x).
    ``pos_embed`` adds a fixed 2D sinusoidal position to every token after the 1x1 in, so attention queries know
    where they are from the first step (captions that name a place).
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        context_dim: int,
        depth: int = 1,
        dropout: float = 0.0,
        num_groups: int = 32,
        norm_eps: float = 1e-5,
        linear_proj: bool = False,
        qkv_bias: bool = True,
        upcast: bool = False,
        pos_embed: bool = False,
    ) -> None:
        super().__init__()
        self.pos_embed = pos_embed
        self.norm = nn.GroupNorm(num_groups, channels, eps=norm_eps)
        self.proj_in = nn.Linear(channels, channels) if linear_proj else nn.Conv2d(channels, channels, 1)
        self.blocks = nn.ModuleList(
            CrossTransformerBlock(channels, heads, context_dim, dropout=dropout, qkv_bias=qkv_bias, upcast=upcast)
            for _ in range(depth)
        )
        self.proj_out = zero_init(nn.Linear(channels, channels) if linear_proj else nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Condition ``x`` (B,C,H,W) on ``context`` (B,M,context_dim); ``context_mask`` (B,M bool, True = keep)."""
        h = tokenwise(self.proj_in, rearrange(self.norm(x), "b c h w -> b (h w) c"))
        if self.pos_embed:
            h = h + position_embedding(x.shape[2], x.shape[3], x.shape[1], x.device).to(h.dtype)
        for block in self.blocks:
            h = block(h, context, context_mask)
        return x + rearrange(tokenwise(self.proj_out, h), "b (h w) c -> b c h w", h=x.shape[2])


CHECKPOINTED = (ResBlock, AttentionBlock, SpatialTransformer)


class UNetStage(nn.ModuleList):
    """Layers run in order, each handed the conditioning it takes; res/attention layers optionally checkpointed."""

    def __init__(self, layers: Sequence[nn.Module], use_checkpoint: bool = False) -> None:
        super().__init__(layers)
        self.use_checkpoint = use_checkpoint

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply every layer to ``x``: ResBlocks get ``emb``, SpatialTransformers get ``context``/``context_mask``."""
        recompute = self.use_checkpoint and self.training and torch.is_grad_enabled()
        for layer in self:
            if isinstance(layer, ResBlock):
                args: tuple[torch.Tensor | None, ...] = (x, emb)
            elif isinstance(layer, SpatialTransformer):
                args = (x, context, context_mask)
            else:
                args = (x,)
            if recompute and isinstance(layer, CHECKPOINTED):
                x = checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        return x


class UNetModel(nn.Module):
    """Noise-prediction U-Net (B,C,H,W), timesteps (B,) [, labels, context] -> (B,out_channels,H,W).

    Every residual branch and the output conv are zero-initialised, so a freshly built U-Net outputs exactly 0.
    Attention runs at levels whose downsampling factor is in ``attention_resolutions`` and in the middle block:
    plain self-attention, or a SpatialTransformer with cross-attention when ``context_dim`` is set. Stable
    Diffusion's U-Nets set ``transformer_norm_eps=1e-6`` and ``attention_qkv_bias=False`` (and 2.x
    ``use_linear_in_transformer``, ``upcast_attention``), ``use_scale_shift_norm=False`` and ``num_head_channels``
    64 (2.x). ``transformer_pos_embed`` gives the transformers' tokens 2D sinusoidal positions (not in SD).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        model_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (2, 4),
        num_heads: int = 4,
        num_head_channels: int = -1,
        dropout: float = 0.0,
        resblock_updown: bool = False,
        use_scale_shift_norm: bool = True,
        num_classes: int | Sequence[int] | None = None,
        use_checkpoint: bool = False,
        conv_resample: bool = True,
        num_groups: int = 32,
        context_dim: int | None = None,
        transformer_depth: int = 1,
        pooled_dim: int | None = None,
        transformer_norm_eps: float = 1e-5,
        use_linear_in_transformer: bool = False,
        attention_qkv_bias: bool = True,
        upcast_attention: bool = False,
        transformer_pos_embed: bool = False,
    ) -> None:
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        # the architecture, for exporters that describe it to other tools (diffusers' config.json)
        self.config = {"in_channels": in_channels, "out_channels": out_channels, "model_channels": model_channels,
                       "channel_mult": list(channel_mult), "num_res_blocks": num_res_blocks,
                       "attention_resolutions": sorted(int(r) for r in attention_resolutions), "num_heads": num_heads,
                       "num_head_channels": num_head_channels, "context_dim": context_dim,
                       "use_linear_in_transformer": use_linear_in_transformer, "transformer_depth": transformer_depth,
                       "upcast_attention": upcast_attention, "transformer_pos_embed": transformer_pos_embed}
        widths = sorted({model_channels, *(model_channels * m for m in channel_mult)})
        bad = [c for c in widths if c % num_groups]
        if bad:
            raise ValueError(
                f"num_groups {num_groups} must divide every channel count {widths} "
                f"(model_channels {model_channels} x channel_mult {channel_mult}); it does not divide {bad}"
            )
        if num_head_channels > 0 and any(c % num_head_channels for c in widths):
            raise ValueError(f"num_head_channels {num_head_channels} must divide every channel count {widths}")
        if num_classes is None or isinstance(num_classes, int):
            self.num_classes = None if num_classes is None else (num_classes,)
        else:
            self.num_classes = tuple(int(n) for n in num_classes)
        self.context_dim = context_dim
        self.num_res_blocks = num_res_blocks
        self.downsampling = 2 ** (len(channel_mult) - 1)
        attention_resolutions = {int(r) for r in attention_resolutions}
        emb_dim = 4 * model_channels

        self.time_embed = TimestepEmbedding(model_channels, emb_dim)
        self.label_embed = None if self.num_classes is None else LabelEmbedding(self.num_classes, emb_dim)
        self.pooled_dim = pooled_dim
        self.pooled_embed = None if pooled_dim is None else nn.Sequential(
            nn.Linear(pooled_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(ch: int, out: int | None = None, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(ch, emb_dim, out, dropout, use_scale_shift_norm, num_groups, up=up, down=down)

        def attn(ch: int) -> nn.Module:
            heads = ch // num_head_channels if num_head_channels > 0 else num_heads
            if context_dim is None:
                return AttentionBlock(ch, heads, num_groups)
            return SpatialTransformer(ch, heads, context_dim, transformer_depth, dropout, num_groups,
                                      transformer_norm_eps, use_linear_in_transformer, attention_qkv_bias,
                                      upcast_attention, transformer_pos_embed)

        def stage(*layers: nn.Module) -> UNetStage:
            return UNetStage(layers, use_checkpoint)

        ch = model_channels
        self.input_blocks = nn.ModuleList([stage(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(stage(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(stage(down))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = stage(res(ch), attn(ch), res(ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(res(ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(stage(*layers))

        self.out = nn.Sequential(
            nn.GroupNorm(num_groups, ch), nn.SiLU(), zero_init(nn.Conv2d(ch, out_channels, 3, padding=1))
        )

    def null_labels(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Unconditional labels for a batch: (B,) for one class head, (B, K) for K heads."""
        if self.label_embed is None:
            raise ValueError("null_labels() needs a class-conditional U-Net, but num_classes is None")
        return self.label_embed.null_labels(batch_size, device)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict for ``x`` at ``t`` (B,) or scalar; ``y`` None means null labels; ``context_mask`` True = keep.

        ``pooled`` (B, pooled_dim), e.g. the mean text token, joins the timestep embedding (Imagen's pooled text
        embedding): a global signal that every residual block sees, beside cross-attention's per-position one.
        """
        if x.shape[-1] % self.downsampling or x.shape[-2] % self.downsampling:
            raise ValueError(f"input H,W {tuple(x.shape[-2:])} must be divisible by {self.downsampling}")
        if (context is None) != (self.context_dim is None):
            raise ValueError(
                f"context {'given' if context is not None else 'missing'} but context_dim is {self.context_dim}"
            )
        emb = self.time_embed(t.reshape(-1).expand(x.shape[0]))
        if self.label_embed is not None:
            emb = emb + self.label_embed(self.null_labels(x.shape[0], x.device) if y is None else y)
        elif y is not None:
            raise ValueError(f"labels y of shape {tuple(y.shape)} given but num_classes is None")
        if (pooled is None) != (self.pooled_embed is None):
            raise ValueError(f"pooled {'given' if pooled is not None else 'missing'} but pooled_dim is "
                             f"{self.pooled_dim}")
        if self.pooled_embed is not None:
            emb = emb + self.pooled_embed(pooled.to(emb.dtype))

        h = x
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context, context_mask)
            skips.append(h)
        h = self.middle_block(h, emb, context, context_mask)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
        return self.out(h)
