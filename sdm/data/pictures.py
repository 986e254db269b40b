"""Pictures of a dataset for people: images over their coloured masks, the class-frequency chart."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from sdm.core.viz import grid
from sdm.data.classes import CLASS_NAMES, PALETTE, SIDEWALK, ClassTable


def pairs_grid(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], table: ClassTable = SIDEWALK,
               columns: int = 8) -> np.ndarray:
    """Images above their masks in the table's colours, `columns` pairs per band."""
    rows: list[list[np.ndarray]] = []
    for start in range(0, len(images), columns):
        rows.append(list(images[start : start + columns]))
        rows.append([table.colorize(lb) for lb in labels[start : start + columns]])
    return grid(rows)


def class_frequency_chart(
    frequencies: Sequence[float], image_counts: Sequence[int], names: Sequence[str] = CLASS_NAMES,
    palette: np.ndarray = PALETTE,
) -> np.ndarray:
    """A horizontal bar chart of pixel frequency per class, bars in the class colour."""
    row_h, label_w, bar_w = 16, 330, 420
    image = Image.new("RGB", (label_w + bar_w + 20, row_h * (len(names) + 2)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), "class (images containing it)        pixel frequency", fill="black")
    top = max(max(frequencies), 1e-12)
    for i, (name, freq, count) in enumerate(zip(names, frequencies, image_counts, strict=True)):
        y = row_h * (i + 1) + 4
        draw.text((4, y), f"{i:2d} {name} ({count})", fill="black")
        length = int(bar_w * freq / top)
        colour = tuple(int(v) for v in palette[i])
        draw.rectangle((label_w, y, label_w + max(length, 1), y + row_h - 4), fill=colour, outline="black")
        draw.text((label_w + length + 4, y), f"{freq:.2%}", fill="black")
    return np.asarray(image)
