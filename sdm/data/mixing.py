"""Real + synthetic training data (`data.extra=<export> data.extra_ratio=r`).

Every epoch holds all real training rows once and as many synthetic rows as make them a share
r of the epoch (drawn without repeats while the synthetic pool lasts, a new draw each epoch);
r = 1 trains on the synthetic rows alone. Validation stays real. The synthetic source is any
data source in the Hub schema, typically `python -m sdm.cli.export`'s output.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset

from sdm.core.errors import ConfigError


def extra_ratio(cfg: Any) -> float:
    """data.extra_ratio, checked: a share in [0, 1] (0 = real only, 1 = synthetic only)."""
    ratio = cfg.get("extra_ratio", 0.5)
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ConfigError(f"data.extra_ratio={ratio!r}: expected the share of synthetic rows per epoch, "
                          "a number in [0, 1] (0: real only, 1: synthetic only)")
    return value


def extra_source_cfg(cfg: Any) -> Any:
    """The data config of the synthetic rows: the run's sizes and cache, the export as a local source."""
    extra = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "scenes"}
    extra.update(name="sidewalk", path=str(cfg.extra), revision=None, split="train", streaming=False, extra=None,
                 path_setting="data.extra")
    return OmegaConf.create(extra)


def synthetic_count(num_real: int, num_synthetic: int, ratio: float) -> int:
    """Synthetic rows per epoch so that they make `ratio` of it beside `num_real` real rows."""
    if ratio >= 1.0:
        return num_synthetic
    return round(num_real * ratio / (1.0 - ratio))


def epoch_size(num_real: int, num_synthetic: int, ratio: float) -> int:
    return (num_real if ratio < 1.0 else 0) + synthetic_count(num_real, num_synthetic, ratio)


def epoch_items(num_real: int, num_synthetic: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Dataset indices of one epoch, shuffled: real rows are 0..R-1, synthetic rows R..R+S-1."""
    count = synthetic_count(num_real, num_synthetic, ratio)
    draws = [torch.randperm(num_synthetic, generator=generator) for _ in range(-(-count // num_synthetic))]
    pool = torch.cat([torch.arange(0), *draws])[:count]  # as few repeats as the pool allows
    items = torch.cat([torch.arange(num_real if ratio < 1.0 else 0), num_real + pool])
    return items[torch.randperm(len(items), generator=generator)]


class MixedPairs(Dataset):
    """Real rows then synthetic rows, behind one index (the samplers' (index, seed) keys)."""

    def __init__(self, real: Dataset, synthetic: Dataset) -> None:
        self.real, self.synthetic = real, synthetic

    def __len__(self) -> int:
        return len(self.real) + len(self.synthetic)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if index < len(self.real):
            return self.real[(index, seed)]
        return self.synthetic[(index - len(self.real), seed)]
