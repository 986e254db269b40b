"""Pictures for people: tensors to images, grids of tiles, atomic PNG writes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdm.core.atomic import write_atomically


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


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write an image atomically (temporary name, fsync, rename)."""
    write_atomically(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def image_problem(path: str | Path, size: tuple[int, int] | None = None) -> str | None:
    """Why the image file at `path` cannot be used (missing, truncated, not an image, or not
    `size` = (height, width)); None when it decodes whole. A killed writer of another tool, a
    full disk or a copy cut short leave such files, and an image counted as done stays wrong."""
    try:
        with Image.open(path) as image:
            image.load()  # decodes every pixel: a truncated PNG fails here, not at its header
            found = (image.height, image.width)
    except FileNotFoundError:
        return "missing"
    except (OSError, SyntaxError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
        return f"cannot be decoded ({err})"
    if size is not None and found != tuple(size):
        return f"is {found[0]}x{found[1]}, expected {size[0]}x{size[1]}"
    return None
