"""Rows and datasets made by the tests: street-like pairs, PNG bytes, a local folder in the Hub schema."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def street_like(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A cheap structured (image, label) pair: horizontal bands of classes with gradients."""
    rng = np.random.default_rng(seed)
    label = np.zeros((height, width), dtype=np.uint8)
    bands = np.sort(rng.choice(np.arange(1, height), size=3, replace=False))
    classes = rng.choice(np.arange(1, 35), size=4, replace=False)
    for start, stop, cls in zip([0, *bands], [*bands, height], classes, strict=True):
        label[start:stop] = cls
    label[:, : width // 7] = classes[0]
    colour = (label.astype(np.int32) * 7) % 255
    gradient = np.linspace(0, 40, width, dtype=np.int32)[None, :]
    image = np.stack([colour, (colour + gradient) % 255, (255 - colour)], -1).astype(np.uint8)
    return image, label


def write_hub_parquet(root: Path, rows: list[dict]) -> Path:
    """A local folder in the exact Hub schema of segments/sidewalk-semantic."""
    import datasets

    features = datasets.Features({"pixel_values": datasets.Image(), "label": datasets.Image()})
    columns = {"pixel_values": [r["pixel_values"] for r in rows], "label": [r["label"] for r in rows]}
    (root / "data").mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_dict(columns, features=features)
    ds.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return root


def hub_row(image: np.ndarray, label: np.ndarray, image_mode: str | None = None) -> dict:
    return {
        "pixel_values": {"bytes": png_bytes(image, image_mode), "path": None},
        "label": {"bytes": png_bytes(label), "path": None},
    }
