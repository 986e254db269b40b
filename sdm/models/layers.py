"""Small building pieces shared by the U-Net blocks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

NUM_GROUPS = 32


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups that normalises in float32.

    Mixed precision (bf16/fp16) statistics over large groups lose accuracy, so the
    normalisation runs in float32 (weights included, so a network cast to bf16 works too)
    and the result goes back to the input dtype.
    """

    def __init__(self, channels: int, affine: bool = True) -> None:
        if channels % NUM_GROUPS != 0:
            raise ValueError(
                f"GroupNorm needs channels divisible by {NUM_GROUPS}, got {channels}; "
                f"choose model_channels * channel_mult as multiples of {NUM_GROUPS}"
            )
        super().__init__(NUM_GROUPS, channels, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        if self.weight is not None and self.weight.dtype != torch.float32:  # a network cast to bf16
            weight, bias = self.weight.float(), self.bias.float()
            return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)
        return super().forward(x.float()).to(x.dtype)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a module's parameters so a residual branch starts as the identity."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def maybe_checkpoint(fn: Callable[..., Tensor], *args: Tensor, enabled: bool) -> Tensor:
    """Run ``fn(*args)``, recomputing it in backward instead of storing activations."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class Downsample(nn.Module):
    """Halve the spatial size: stride-2 3x3 conv, or 2x2 average pooling without conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("pooling cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the spatial size by nearest interpolation, optionally followed by a 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if not use_conv and out_channels != channels:
            raise ValueError("upsampling without conv cannot change the channel count")
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


def resampler(channels: int, up: bool, down: bool) -> nn.Module:
    """Parameter-free resampling used inside up/down ResBlocks (identity when neither)."""
    if up and down:
        raise ValueError("a block cannot both upsample and downsample")
    if up:
        return Upsample(channels, use_conv=False)
    if down:
        return Downsample(channels, use_conv=False)
    return nn.Identity()
