"""SPADE normalisation and the mask-conditioned ResBlock of the middle and decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdm.models.blocks import skip_projection, timestep_scale_shift
from sdm.models.layers import GroupNorm32, maybe_checkpoint, resampler, zero_init


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: ``GN(x) * (1 + gamma(m)) + beta(m)``.

    GroupNorm without affine parameters removes the feature statistics; the per-pixel
    gamma and beta, predicted from the nearest-resized one-hot mask ``m`` by a small conv
    net, re-inject the layout at every decoder stage so it cannot be washed away.
    """

    def __init__(self, channels: int, label_channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.norm = GroupNorm32(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(label_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)
        self.cache: dict[tuple, tuple[Tensor, Tensor]] | None = None  # see SDMUNet.reuse_condition

    def modulation(self, cond: Tensor, size: torch.Size) -> tuple[Tensor, Tensor]:
        """(1 + gamma, beta) at `size`; they depend on the mask alone, never on x or t."""
        key = (cond.data_ptr(), tuple(cond.shape), tuple(size), torch.is_autocast_enabled(cond.device.type))
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        if cond.shape[-2:] != size:
            cond = F.interpolate(cond, size=size, mode="nearest")
        actv = self.shared(cond)
        result = (1 + self.gamma(actv), self.beta(actv))
        if self.cache is not None:
            if len(self.cache) >= 4:  # a new mask batch: forget the old one
                self.cache.clear()
            self.cache[key] = result
        return result

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.modulation(cond, x.shape[-2:])
        return self.norm(x) * scale + shift


class SPADEResBlock(nn.Module):
    """ResBlock whose two normalisations are SPADE, the second followed by AdaGN.

    Layout (as in the SDM reference code): SPADE_in, SiLU, [resample], conv3x3 ->
    SPADE_out(h) * (1 + scale) + shift, SiLU, dropout, zero-init conv3x3, plus a skip path.
    Each block owns its two SPADE modules.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        label_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        spade_hidden: int = 128,
        up: bool = False,
        down: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        self.in_norm = SPADE(channels, label_channels, spade_hidden)
        self.in_act = nn.SiLU()
        self.in_conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        self.h_resample = resampler(channels, up, down)
        self.x_resample = resampler(channels, up, down)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels))
        self.out_norm = SPADE(self.out_channels, label_channels, spade_hidden)
        self.out_layers = nn.Sequential(
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_init(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        self.skip = skip_projection(channels, self.out_channels)

    def forward(self, x: Tensor, cond: Tensor, emb: Tensor) -> Tensor:
        return maybe_checkpoint(self._forward, x, cond, emb, enabled=self.use_checkpoint)

    def _forward(self, x: Tensor, cond: Tensor, emb: Tensor) -> Tensor:
        h = self.in_act(self.in_norm(x, cond))
        h = self.in_conv(self.h_resample(h))
        x = self.x_resample(x)
        scale, shift = timestep_scale_shift(self.emb_layers, emb, h)
        h = self.out_norm(h, cond) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)
