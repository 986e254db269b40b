"""Grids for the report: the best and worst masks by consistency, the segmenter's view beside each sample."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from sdm.core.viz import grid
from sdm.data.rows import read_rgb_file
from sdm.metrics.image_sets import ImageSet
from sdm.metrics.scoring import to_tensor
from sdm.segmenter.controls import blur_control

GREY = 128


def fit(tile: np.ndarray, longest: int) -> np.ndarray:
    """A tile scaled (nearest, so masks keep their colours) to about `longest` pixels a side:
    large ones down, small ones up by a whole factor."""
    height, width = tile.shape[:2]
    if max(height, width) > longest:
        scale = longest / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return np.asarray(Image.fromarray(tile).resize(size, Image.Resampling.NEAREST))
    factor = longest // max(height, width)
    return tile.repeat(factor, 0).repeat(factor, 1) if factor > 1 else tile


def mask_row(image_set: ImageSet, index: int, segmenter: nn.Module | None, device: torch.device,
             samples_shown: int, longest: int) -> list[np.ndarray]:
    """mask | real photo (grey without one) | sample, segmenter's reading of it | ..."""
    entry = image_set.entries[index]
    size = image_set.size
    real = read_rgb_file(entry.real, size) if entry.real is not None else np.full((*size, 3), GREY, np.uint8)
    samples = [read_rgb_file(p, size) for p in entry.samples[:samples_shown]]
    row = [image_set.table.colorize(entry.label), real]
    predictions: list[np.ndarray | None] = [None] * len(samples)
    if segmenter is not None:
        with torch.no_grad():
            ids = segmenter(to_tensor(samples).to(device)).argmax(1).cpu().numpy().astype(np.uint8)
        predictions = [image_set.table.colorize(p) for p in ids]
    for sample, prediction in zip(samples, predictions, strict=True):
        row.append(sample)
        if prediction is not None:
            row.append(prediction)
    return [fit(tile, longest) for tile in row]


def ranked_masks(per_mask: Sequence[dict[str, Any]], count: int) -> tuple[list[int], list[int]]:
    """Indices of the `count` best and worst masks by mIoU (the first masks when nothing was scored)."""
    scored = [(row["miou"], i) for i, row in enumerate(per_mask) if math.isfinite(row.get("miou", math.nan))]
    if not scored:
        first = list(range(min(count, len(per_mask))))
        return first, []
    scored.sort(key=lambda pair: (-pair[0], pair[1]))
    best = [i for _, i in scored[:count]]
    worst = [i for _, i in reversed(scored[-count:]) if i not in best]
    return best, worst


def ranking_grid(image_set: ImageSet, indices: Sequence[int], segmenter: nn.Module | None, device: torch.device,
                 samples_shown: int = 3, longest: int = 128) -> np.ndarray:
    return grid([mask_row(image_set, i, segmenter, device, samples_shown, longest) for i in indices])


def calibration_grid(image_set: ImageSet, indices: Sequence[int], blur_factor: int, samples_shown: int = 2,
                     longest: int = 128) -> np.ndarray | None:
    """Rows of mask | blur control | samples | real photo: what the ratio's two ends look like beside
    the generated images (None when the set has no real photos)."""
    rows = []
    for index in indices:
        entry = image_set.entries[index]
        if entry.real is None:
            continue
        real = read_rgb_file(entry.real, image_set.size)
        blurred = blur_control(to_tensor([real]), blur_factor)[0]
        blurred = ((blurred.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        samples = [read_rgb_file(p, image_set.size) for p in entry.samples[:samples_shown]]
        samples += [np.full_like(real, GREY)] * (samples_shown - len(samples))  # the real column stays in place
        rows.append([fit(tile, longest) for tile in (image_set.table.colorize(entry.label), blurred, *samples, real)])
    return grid(rows) if rows else None
