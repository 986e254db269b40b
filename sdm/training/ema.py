"""Exponential moving average of the U-Net weights, with a warm-up for short runs.

With a fixed decay d the initial (random) weights still weigh d**n after n updates
(0.87 after 1,386 steps at 0.9999), so short runs sample noise. The warm-up
decay_n = min(d, (1 + n) / (10 + n)) lets the average follow the weights early on.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def ema_decay(decay: float, num_updates: int, warmup: bool = True) -> float:
    """The decay used for update number `num_updates` (0-based)."""
    if not warmup:
        return decay
    return min(decay, (1 + num_updates) / (10 + num_updates))


class EMA(AveragedModel):
    """`AveragedModel` whose average is an EMA; it never trains and DDP never waits for it."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema.decay must lie in (0, 1), got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        super().__init__(model, multi_avg_fn=self._average, use_buffers=True)
        self.requires_grad_(False)

    def _average(self, averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        # AveragedModel copies the weights on the first update and calls this from the second,
        # with num_averaged = 1, 2, ...: update number n = num_averaged.
        weight = 1.0 - ema_decay(self.decay, int(num_averaged), self.warmup)
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():
                a.copy_(c)
