"""Multi-head self-attention over all spatial positions of a feature map."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from sdm.models.layers import GroupNorm32, maybe_checkpoint, zero_init


def split_heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split (B, 3C, T) projections into q, k, v of shape (B, heads, T, C // heads).

    The channel axis is read as [q | k | v], each block then cut into equal heads.
    """
    b, width, t = qkv.shape
    head_dim = width // (3 * num_heads)
    q, k, v = qkv.reshape(b, 3, num_heads, head_dim, t).transpose(-1, -2).unbind(dim=1)
    return q, k, v


class AttentionBlock(nn.Module):
    """Residual self-attention: x + proj(MHA(GN(x))), with a zero-initialised projection.

    Lets distant regions of the image exchange information, which convolutions at low
    resolution cannot do in one step. Uses ``scaled_dot_product_attention`` so fused
    kernels (flash / memory-efficient) are picked where available.
    """

    def __init__(
        self, channels: int, num_head_channels: int = 64, use_checkpoint: bool = False
    ) -> None:
        super().__init__()
        if channels % num_head_channels != 0:
            raise ValueError(
                f"attention channels {channels} not divisible by num_head_channels {num_head_channels}"
            )
        self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return maybe_checkpoint(self._forward, x, enabled=self.use_checkpoint)

    def _forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        flat = x.reshape(b, c, height * width)
        q, k, v = split_heads(self.qkv(self.norm(flat)), self.num_heads)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d)
        a = a.transpose(-1, -2).reshape(b, c, height * width)
        return (flat + self.proj_out(a)).reshape(b, c, height, width)
