"""Timestep embedding: sinusoidal features followed by a two-layer MLP."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Map timesteps (B,) to (B, dim) float32 features ``[cos(t f_i), sin(t f_i)]``.

    Frequencies are geometric from 1 down to 1/max_period, so both the coarse and the fine
    position of t in the diffusion chain are visible to the network; t may be fractional.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must have shape (B,), got {tuple(timesteps.shape)}")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of width C passed through Linear(C, 4C), SiLU, Linear(4C, 4C)."""

    def __init__(self, model_channels: int, embed_dim: int | None = None) -> None:
        super().__init__()
        self.model_channels = model_channels
        self.embed_dim = embed_dim or 4 * model_channels
        self.mlp = nn.Sequential(
            nn.Linear(model_channels, self.embed_dim),
            nn.SiLU(),
            nn.Linear(self.embed_dim, self.embed_dim),
        )

    def forward(self, timesteps: Tensor) -> Tensor:
        emb = sinusoidal_embedding(timesteps, self.model_channels)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))
