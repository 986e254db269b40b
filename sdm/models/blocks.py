"""Encoder ResBlock: sees only the image features and the timestep (no mask)."""

from __future__ import annotations

from torch import Tensor, nn

from sdm.models.layers import GroupNorm32, maybe_checkpoint, resampler, zero_init


def timestep_scale_shift(emb_layers: nn.Module, emb: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """Project the timestep embedding to per-channel (scale, shift) broadcastable to ``like``."""
    out = emb_layers(emb).to(like.dtype)[:, :, None, None]
    scale, shift = out.chunk(2, dim=1)
    return scale, shift


def skip_projection(channels: int, out_channels: int) -> nn.Module:
    """Identity when widths match, else a 1x1 conv so the residual sum is defined."""
    if channels == out_channels:
        return nn.Identity()
    return nn.Conv2d(channels, out_channels, 1)


class ResBlock(nn.Module):
    """Residual block with AdaGN timestep conditioning: ``GN(h) * (1 + scale) + shift``.

    Layout: GN, SiLU, [resample], conv3x3 -> AdaGN, SiLU, dropout, zero-init conv3x3, plus a
    skip path. The zero-initialised last conv makes the block start as (nearly) identity.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        up: bool = False,
        down: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        self.in_norm = GroupNorm32(channels)
        self.in_act = nn.SiLU()
        self.in_conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        self.h_resample = resampler(channels, up, down)
        self.x_resample = resampler(channels, up, down)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels))
        self.out_norm = GroupNorm32(self.out_channels)
        self.out_layers = nn.Sequential(
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_init(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        self.skip = skip_projection(channels, self.out_channels)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return maybe_checkpoint(self._forward, x, emb, enabled=self.use_checkpoint)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_act(self.in_norm(x))
        h = self.in_conv(self.h_resample(h))
        x = self.x_resample(x)
        scale, shift = timestep_scale_shift(self.emb_layers, emb, h)
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)
