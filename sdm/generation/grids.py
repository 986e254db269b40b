"""Comparison grids: one row per mask (coloured mask, photo, samples), 8 masks per picture."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sdm.core.viz import grid, save_png
from sdm.data.classes import SIDEWALK, ClassTable
from sdm.data.rows import read_rgb_file
from sdm.generation.layout import image_name
from sdm.generation.masks import Mask

MASKS_PER_GRID = 8


def grid_row(out_dir: Path, mask: Mask, per_mask: int, with_real: bool, table: ClassTable = SIDEWALK) -> list[np.ndarray]:
    """coloured mask | real photo (grey when a neighbour row has one and this mask not) | samples
    (as many as the mask has: with hardness re-sampling rows differ, and short ones are padded)."""
    row = [table.colorize(mask.label)]
    if with_real:
        row.append(mask.real if mask.real is not None else np.full((*mask.label.shape, 3), 128, np.uint8))
    return row + [read_rgb_file(out_dir / "images" / image_name(mask.name, k)) for k in range(mask.images(per_mask))]


def write_grids(out_dir: Path, masks: Sequence[Mask], per_mask: int, touched: set[str],
                table: ClassTable = SIDEWALK) -> list[str]:
    """grids/grid_NNN.png, one row per mask (in the table's colours), 8 masks each; only grids with new
    samples are redrawn."""
    names = []
    for index, start in enumerate(range(0, len(masks), MASKS_PER_GRID)):
        group = masks[start : start + MASKS_PER_GRID]
        name = f"grids/grid_{index:03d}.png"
        names.append(name)
        if (out_dir / name).is_file() and not touched.intersection(m.name for m in group):
            continue
        with_real = any(m.real is not None for m in group)
        save_png(grid([grid_row(out_dir, m, per_mask, with_real, table) for m in group]), out_dir / name)
    return names
