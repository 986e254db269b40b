"""Pictures for people: coloured masks, comparison grids, the class-frequency chart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from sdm.atomic import write_atomically
from sdm.data.classes import CLASS_NAMES, PALETTE, colorize


def to_uint8_image(tensor: torch.Tensor) -> np.ndarray:
    """A 3 x H x W tensor in [-1, 1] -> H x W x 3 uint8."""
    array = ((tensor.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return array.permute(1, 2, 0).cpu().numpy()


def grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile H x W x 3 uint8 tiles into a grid; all tiles must share a size, short rows are padded."""
    tiles = [t for row in rows for t in row]
    if not tiles:
        raise ValueError("grid needs at least one tile")
    height, width = tiles[0].shape[:2]
    columns = max(len(row) for row in rows)
    out = np.full(
        (len(rows) * (height + pad) + pad, columns * (width + pad) + pad, 3), fill, dtype=np.uint8
    )
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            if tile.shape[:2] != (height, width):
                raise ValueError(f"tile ({r}, {c}) is {tile.shape[:2]}, expected {(height, width)}")
            y, x = pad + r * (height + pad), pad + c * (width + pad)
            out[y : y + height, x : x + width] = tile[..., :3] if tile.ndim == 3 else tile[..., None]
    return out


def pairs_grid(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], columns: int = 8) -> np.ndarray:
    """Images above their coloured masks, `columns` pairs per band."""
    rows: list[list[np.ndarray]] = []
    for start in range(0, len(images), columns):
        rows.append(list(images[start : start + columns]))
        rows.append([colorize(lb) for lb in labels[start : start + columns]])
    return grid(rows)


def class_frequency_chart(
    frequencies: Sequence[float], image_counts: Sequence[int], names: Sequence[str] = CLASS_NAMES
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
        colour = tuple(int(v) for v in PALETTE[i])
        draw.rectangle((label_w, y, label_w + max(length, 1), y + row_h - 4), fill=colour, outline="black")
        draw.text((label_w + length + 4, y), f"{freq:.2%}", fill="black")
    return np.asarray(image)


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write an image atomically (temporary name, fsync, rename)."""
    write_atomically(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
