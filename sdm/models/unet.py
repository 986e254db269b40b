"""The SDM U-Net: unconditional encoder, SPADE-conditioned middle and decoder."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from sdm.models.attention import AttentionBlock
from sdm.models.blocks import ResBlock
from sdm.models.layers import Downsample, GroupNorm32, Upsample, zero_init
from sdm.models.spade import SPADE, SPADEResBlock
from sdm.models.timestep import TimestepEmbedding


class BlockSequence(nn.ModuleList):
    """Run blocks in order, giving each only the inputs it uses.

    SPADE blocks get (h, cond, emb), encoder ResBlocks (h, emb), anything else (h).
    """

    def forward(self, h: Tensor, emb: Tensor, cond: Tensor | None) -> Tensor:
        for layer in self:
            if isinstance(layer, SPADEResBlock):
                h = layer(h, cond, emb)
            elif isinstance(layer, ResBlock):
                h = layer(h, emb)
            else:
                h = layer(h)
        return h


def _nearest_multiples(size: int, factor: int) -> str:
    if size % factor == 0:
        return str(size)
    lower = (size // factor) * factor
    upper = lower + factor
    return f"{lower} or {upper}" if lower > 0 else f"{upper}"


class SDMUNet(nn.Module):
    """Diffusion U-Net of "Semantic Image Synthesis via Diffusion Models" (Wang et al. 2022).

    The encoder processes only the noisy image; the mask enters the middle and decoder
    through SPADE, so the layout steers every upsampling stage. ``forward(x, t, cond)``
    returns eps (and the variance interpolation ``v`` channels when ``learn_sigma``).
    """

    def __init__(
        self,
        *,
        num_classes: int = 35,
        edge_channel: bool = False,
        in_channels: int = 3,
        model_channels: int = 256,
        channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4),
        num_res_blocks: int = 2,
        attention_ds: Sequence[int] = (8, 16, 32),
        num_head_channels: int = 64,
        spade_hidden: int = 128,
        dropout: float = 0.0,
        learn_sigma: bool = True,
        resblock_updown: bool = True,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        attention_ds = tuple(int(d) for d in attention_ds)
        if not channel_mult:
            raise ValueError("channel_mult must not be empty")
        self.num_classes = num_classes
        self.edge_channel = bool(edge_channel)
        self.label_channels = num_classes + int(edge_channel)
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        valid_ds = {2**i for i in range(len(channel_mult))}
        unreachable = sorted(set(attention_ds) - valid_ds)
        if unreachable:
            raise ValueError(
                f"attention_ds {unreachable} never occur with {len(channel_mult)} levels; "
                f"valid downsample factors are {sorted(valid_ds)}"
            )

        emb_dim = 4 * model_channels
        self.time_embed = TimestepEmbedding(model_channels, emb_dim)

        def res(ch: int, out: int, **kw: bool) -> ResBlock:
            return ResBlock(ch, emb_dim, out, dropout, use_checkpoint=use_checkpoint, **kw)

        def spade_res(ch: int, out: int, **kw: bool) -> SPADEResBlock:
            return SPADEResBlock(
                ch, emb_dim, self.label_channels, out, dropout, spade_hidden,
                use_checkpoint=use_checkpoint, **kw,
            )  # fmt: skip

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_head_channels, use_checkpoint=use_checkpoint)

        # Encoder: image only.
        ch = input_ch = channel_mult[0] * model_channels
        self.input_blocks = nn.ModuleList(
            [BlockSequence([nn.Conv2d(in_channels, ch, 3, padding=1)])]
        )
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(BlockSequence(layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, use_conv=True)
                self.input_blocks.append(BlockSequence([down]))
                skip_chans.append(ch)
                ds *= 2

        # Middle: SPADE, attention, SPADE.
        self.middle_block = BlockSequence([spade_res(ch, ch), attn(ch), spade_res(ch, ch)])

        # Decoder: SPADE blocks on [h, skip], upsampling at the end of each level.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [spade_res(ch + skip_chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_ds:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    up = (
                        spade_res(ch, ch, up=True)
                        if resblock_updown
                        else Upsample(ch, use_conv=True)
                    )
                    layers.append(up)
                    ds //= 2
                self.output_blocks.append(BlockSequence(layers))

        self.out = nn.Sequential(
            GroupNorm32(ch),
            nn.SiLU(),
            zero_init(nn.Conv2d(input_ch, self.out_channels, 3, padding=1)),
        )

    def _check_inputs(self, x: Tensor, timesteps: Tensor | float, cond: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        b, _, height, width = x.shape
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(
                f"input size {height}x{width} is not divisible by the U-Net's total "
                f"downsampling factor {f} (2**(len(channel_mult)-1)); nearest valid sizes: "
                f"height {_nearest_multiples(height, f)}, width {_nearest_multiples(width, f)}"
            )
        if cond.ndim != 4 or cond.shape[0] != b:
            raise ValueError(
                f"cond must have shape ({b}, {self.label_channels}, h, w), got {tuple(cond.shape)}"
            )
        if cond.shape[1] != self.label_channels:
            edge = " + 1 edge channel" if self.edge_channel else ""
            raise ValueError(
                f"cond has {cond.shape[1]} channels but the model expects "
                f"{self.label_channels} label channels ({self.num_classes} classes{edge})"
            )
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        if timesteps.shape != (b,):
            raise ValueError(f"timesteps must have shape ({b},), got {tuple(timesteps.shape)}")
        return timesteps

    @contextmanager
    def reuse_condition(self) -> Iterator[None]:
        """Within this context every SPADE computes its gamma/beta once per mask tensor.

        They depend on the mask alone, so a sampling loop that passes the same `cond` tensor
        at every step skips a third to a half of the network's work after the first step.
        Only for inference: the cache holds no gradients' worth of bookkeeping.
        """
        spades = [m for m in self.modules() if isinstance(m, SPADE)]
        for spade in spades:
            spade.cache = {}
        try:
            yield
        finally:
            for spade in spades:
                spade.cache = None

    def encode(self, x: Tensor, emb: Tensor) -> list[Tensor]:
        """Run the mask-free encoder; returns every block's output (the skip features)."""
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, None)
            hs.append(h)
        return hs

    def forward(self, x: Tensor, timesteps: Tensor, cond: Tensor) -> Tensor:
        """Predict (B, out_channels, H, W) from noisy x, timesteps (B,) and condition map."""
        timesteps = self._check_inputs(x, timesteps, cond)
        cond = cond.to(x.dtype)
        emb = self.time_embed(timesteps)
        hs = self.encode(x, emb)
        h = self.middle_block(hs[-1], emb, cond)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, cond)
        return self.out(h)
