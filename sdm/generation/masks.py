"""The masks to generate from: the run's validation split, or a folder of label PNGs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from PIL import Image, UnidentifiedImageError

from sdm.data.prepare import decode_row, prepare_data, split_indices
from sdm.data.rows import label_to_ids, read_rgb_file
from sdm.errors import DataError
from sdm.generation.weights import Model


@dataclass(frozen=True)
class Mask:
    """One condition: a file stem, its position (the seed offset), class ids, maybe the photo."""

    name: str
    index: int
    label: np.ndarray  # H x W uint8 class ids at the training size
    real: np.ndarray | None = None  # H x W x 3 uint8



def val_masks(train_cfg: dict[str, Any], limit: int | None) -> list[Mask]:
    """The validation split of the run's own data (same cache, same split seed), with the photos."""
    data = OmegaConf.create(train_cfg["data"])
    prepared = prepare_data(data)
    _, val = split_indices(len(prepared), float(data.val_fraction), int(data.split_seed))
    if len(val) == 0:
        raise DataError(f"the training run has no validation split (data.val_fraction={data.val_fraction}); "
                        "pass masks=<folder of label PNGs>")
    rows = prepared.open()
    masks = []
    for position, row_index in enumerate(val[:limit]):
        row = rows[int(row_index)]
        image, label = decode_row(row, prepared.size)
        masks.append(Mask(f"{int(row['index']):06d}", position, label.copy(), image.copy()))
    return masks


def read_mask(path: Path, size: tuple[int, int], num_classes: int) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Class ids of a label PNG (mode L ids or palette colours) at `size`, and its size if resized."""
    try:
        with Image.open(path) as image:
            image.load()
            ids = label_to_ids(image, num_classes)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = str(err).removeprefix("field 'label': ")
        raise DataError(f"mask file '{path}' cannot be used: {reason}") from None
    if ids.shape == size:
        return ids, None
    height, width = size
    resized = Image.fromarray(ids).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(resized), (ids.shape[0], ids.shape[1])


def read_real(path: Path, size: tuple[int, int]) -> np.ndarray | None:
    """The photo of a mask from a sibling images/ folder, when there is one of the same name."""
    return read_rgb_file(path, size, "real image (beside the masks)") if path.is_file() else None


def folder_masks(folder: Path, size: tuple[int, int], num_classes: int, limit: int | None) -> list[Mask]:
    """Label PNGs of a folder in name order; photos come from a sibling images/ folder if present."""
    if not folder.is_dir():
        raise DataError(f"masks={folder}: neither 'val' nor an existing folder of label PNGs")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    if not files:
        raise DataError(f"masks={folder}: the folder holds no .png label files")
    photos = folder.parent / "images"
    masks, resized = [], []
    for position, path in enumerate(files[:limit]):
        label, original = read_mask(path, size, num_classes)
        if original is not None:
            resized.append(f"{path.name} ({original[1]}x{original[0]})")
        real = read_real(photos / path.name, size) if photos.resolve() != folder.resolve() else None
        masks.append(Mask(path.stem, position, label, real))
    if resized:
        print(f"resized {len(resized)} of {len(masks)} masks to the training size {size[1]}x{size[0]} "
              f"(nearest, aspect ratio not kept): {', '.join(resized[:5])}{' ...' if len(resized) > 5 else ''}")
    return masks


def load_masks(spec: str, model: Model, limit: int | None) -> list[Mask]:
    if spec == "val":
        return val_masks(model.cfg, limit)
    num_classes = int(model.cfg["data"]["num_classes"])
    return folder_masks(Path(spec).expanduser(), model.size, num_classes, limit)


# ----------------------------------------------------------------------------- output layout
