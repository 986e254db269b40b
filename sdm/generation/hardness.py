"""Hardness-aware re-sampling, after FreeMask (Yang et al., NeurIPS 2023): more synthetic images
for the masks whose classes a segmenter of the real rows finds hard.

A class's hardness is its mean loss on the real training pixels (sdm.generation.filtering's
class means); a mask's is the pixel-weighted mean of its classes' hardness. The easiest mask gets
one image, the hardest `most`, the others in proportion to where their hardness lies between.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sdm.core.errors import ConfigError
from sdm.generation.filtering import UNLABELED, PixelFilter, prepare_filter
from sdm.generation.masks import Mask


def mask_hardness(label: np.ndarray, class_means: Tensor, unlabeled: int = UNLABELED) -> float:
    """The mean of the class hardness over the mask's labelled pixels (classes with no real
    pixels, and unlabeled ones, do not count); NaN for a mask with none of them."""
    ids = torch.from_numpy(np.ascontiguousarray(label)).long().flatten()
    values = class_means.double()[ids]
    known = ~torch.isnan(values) & (ids != unlabeled)
    return float(values[known].mean()) if known.any() else math.nan


def images_per_mask(hardness: Sequence[float], most: int) -> list[int]:
    """1 image for the easiest mask, `most` for the hardest, linear in hardness between (rounded);
    a mask whose hardness is unknown (NaN), or masks all equally hard, get the middle count."""
    if isinstance(most, bool) or not isinstance(most, int) or most < 1:
        raise ConfigError(f"hardness most={most!r} is invalid: expected an integer >= 1 (images for the hardest mask)")
    known = [h for h in hardness if not math.isnan(h)]
    low, high = (min(known), max(known)) if known else (0.0, 0.0)
    middle = (1 + most) // 2

    def count(h: float) -> int:
        if math.isnan(h) or high == low:  # nothing to rank it by
            return middle
        return 1 + round((most - 1) * (h - low) / (high - low))

    return [count(h) for h in hardness]


def with_hardness_counts(masks: Sequence[Mask], settings: Any, train_data: dict[str, Any],
                         size: tuple[int, int]) -> list[Mask]:
    """The masks with their image counts set by hardness (`settings`: segmenter, most), measured
    with the filter's segmenter of the run's real rows."""
    most = settings.get("most")
    images_per_mask([], most)  # a bad bound is refused before the segmenter is loaded
    ready = prepare_filter(PixelFilter(str(settings.get("segmenter") or "auto")), train_data, size)
    counts = images_per_mask([mask_hardness(m.label, ready.class_means, ready.unlabeled) for m in masks], most)
    print(f"hardness re-sampling with {ready.folder}: {sum(counts)} images for {len(masks)} masks "
          f"(1 to {most} per mask)")
    return [replace(mask, count=count) for mask, count in zip(masks, counts, strict=True)]
