"""Many scenes at once: the Hub-schema dataset, a grid for people to look at, the measurement
behind the reference colours, and the command line (`python -m sdm.cli.scenes`)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from sdm.data.classes import NUM_CLASSES, colorize
from sdm.data.scenes.street import generate_scene

if TYPE_CHECKING:
    import datasets


def measure_reference_colours(num_scenes: int = 600, size: int = 96, seed: int = 12345
                              ) -> np.ndarray:
    """Mean RGB of every class over ``num_scenes`` scenes (zeros for classes never drawn).

    This is how :data:`CLASS_REFERENCE_COLOURS` was made; a test checks the two still agree.
    """
    sums = np.zeros((NUM_CLASSES, 3), np.float64)
    counts = np.zeros(NUM_CLASSES, np.float64)
    for i in range(num_scenes):
        image, label = generate_scene(seed * 1_000_003 + i, size, size)
        flat = label.ravel()
        counts += np.bincount(flat, minlength=NUM_CLASSES)
        for ch in range(3):
            sums[:, ch] += np.bincount(flat, weights=image[..., ch].ravel(), minlength=NUM_CLASSES)
    return np.round(sums / np.maximum(counts, 1)[:, None]).astype(np.uint8)


def scenes_dataset(num_scenes: int, height: int, width: int, seed: int = 0,
                   show_progress: bool = False) -> datasets.Dataset:
    """A ``datasets.Dataset`` with the Hub schema of ``segments/sidewalk-semantic``.

    Scene ``i`` uses seed ``seed * 1_000_003 + i``, so datasets are reproducible. Images are
    stored PNG-encoded (fast level-1 compression), exactly what ``datasets.Image`` stores.
    """
    import datasets
    from tqdm.auto import tqdm

    def png(array: np.ndarray) -> dict:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG", compress_level=1)
        return {"bytes": buf.getvalue(), "path": None}

    images, labels = [], []
    for i in tqdm(range(num_scenes), desc="street scenes", disable=not show_progress):
        image, label = generate_scene(seed * 1_000_003 + i, height, width)
        images.append(png(image))
        labels.append(png(label))
    features = datasets.Features({"pixel_values": datasets.Image(), "label": datasets.Image()})
    return datasets.Dataset.from_dict({"pixel_values": images, "label": labels}, features=features)


def scene_grid(num: int, height: int, width: int, seed: int = 0, cols: int = 8) -> np.ndarray:
    """Images on top of their coloured masks, ``cols`` scenes per row, for people to look at."""
    rows = []
    for start in range(0, num, cols):
        seeds = range(seed * 1_000_003 + start, seed * 1_000_003 + min(num, start + cols))
        pairs = [generate_scene(i, height, width) for i in seeds]
        pad = [np.zeros((height, width, 3), np.uint8)] * (cols - len(pairs))
        rows.append(np.concatenate([im for im, _ in pairs] + pad, axis=1))
        rows.append(np.concatenate([colorize(lb) for _, lb in pairs] + pad, axis=1))
    return np.concatenate(rows, axis=0)
