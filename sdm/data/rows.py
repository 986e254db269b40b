"""Decoding, validation and resizing of single (image, label) rows.

Every source passes through here, so a bad row is reported the same way whether it came
from the Hub, a local parquet folder or the scene generator.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sdm.core.errors import DataError
from sdm.data.classes import SIDEWALK, ClassTable, class_table

RESIZE_MODES = ("stretch", "crop")


class RowError(ValueError):
    """A row that cannot be used; the message says which field and why."""


@dataclass(frozen=True)
class CleanRow:
    image: np.ndarray  # H x W x 3 uint8 RGB
    label: np.ndarray  # H x W uint8 class ids
    converted_from: str | None  # original image mode when it was not RGB
    instance: np.ndarray | None = None  # H x W int32 instance ids, where the row has an instance map


def open_image(value: object, field: str) -> Image.Image:
    """Open a `datasets.Image(decode=False)` value (dict with bytes/path), a PIL image or an array."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        try:
            image = Image.open(source)
            image.load()
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise RowError(f"field '{field}': cannot decode image ({err})") from None
        return image
    raise RowError(f"field '{field}': expected an image, got {type(value).__name__}")


def image_to_rgb(image: Image.Image) -> tuple[np.ndarray, str | None]:
    """RGB uint8 array; RGBA, grayscale and palette images are converted and the mode reported.

    Transparent pixels (alpha, or a palette or grey-level transparency key) become black."""
    if image.mode == "RGB":
        return np.asarray(image), None
    mode = image.mode
    if mode in ("RGBA", "LA", "PA") or "transparency" in image.info:  # a palette or grey-level key
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = max(array.max(), 1.0)
        image = Image.fromarray((array * (255.0 / (65535.0 if peak > 255 else 255.0))).astype(np.uint8))
    return np.asarray(image.convert("RGB")), mode


def as_table(classes: ClassTable | int | None) -> ClassTable:
    """A class table from a table, a label-channel count (a generic table of that many, or
    sidewalk's for 35) or None (sidewalk's)."""
    if isinstance(classes, ClassTable):
        return classes
    return SIDEWALK if classes is None else class_table({"num_classes": int(classes)})


def label_to_ids(image: Image.Image, classes: ClassTable | int | None = None) -> np.ndarray:
    """Class ids from a label image through its table: mode L/P/I values via the table's mapping;
    RGB as a map in the table's colours (label_format color or auto), or as grey values when all
    three channels agree (an id map saved as RGB)."""
    table = as_table(classes)
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB"))
        grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
        if table.label_format == "ids" and not grey:
            raise RowError(f"field 'label': an RGB (colour-coded) label map, but the '{table.name}' table reads id "
                           f"maps (label_format: ids); for colour-coded labels set data.classes.label_format=color "
                           f"and data.classes.palette to the files' colours")
        if table.label_format == "ids":
            values = rgb[..., 0].astype(np.int64)
        else:
            try:
                return table.decolorize(rgb)
            except ValueError as err:
                if not grey or table.label_format == "color":
                    raise RowError(f"field 'label': RGB label is not a palette-coloured mask: {err}") from None
                values = rgb[..., 0].astype(np.int64)
    elif image.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
        values = np.asarray(image).astype(np.int64)
    else:
        raise RowError(f"field 'label': unsupported label mode {image.mode!r}; expected 'L' (class ids)")
    if values.ndim != 2:
        raise RowError(f"field 'label': expected a single-channel id map, got shape {values.shape}")
    try:
        return table.ids_from_values(values)
    except ValueError as err:
        raise RowError(f"field 'label': {err}") from None


def clean_row(row: dict, classes: ClassTable | int | None = None) -> CleanRow:
    """Decode and check one row; raise `RowError` with the reason (and the label's file, where the
    row has one) when it cannot be used."""
    image = open_image(row["pixel_values"], "pixel_values")
    label_image = open_image(row["label"], "label")
    if image.size != label_image.size:
        raise RowError(
            f"{_file_of(row)}image is {image.size[0]}x{image.size[1]} but label is "
            f"{label_image.size[0]}x{label_image.size[1]} (width x height); they must match"
        )
    rgb, converted = image_to_rgb(image)
    try:
        ids = label_to_ids(label_image, classes)
    except RowError as err:
        raise RowError(f"{_file_of(row)}{err}") from None
    instance = None
    if row.get("instance") is not None:
        instance_image = open_image(row["instance"], "instance")
        if instance_image.size != image.size:
            raise RowError(f"{_file_of(row)}the instance map is {instance_image.size[0]}x{instance_image.size[1]}, "
                           f"the image {image.size[0]}x{image.size[1]}; they must match")
        instance = instance_ids(instance_image)
    return CleanRow(rgb, ids, converted, instance)


def instance_ids(image: Image.Image) -> np.ndarray:
    """H x W int32 instance ids: 8-, 16- or 32-bit grey values, or RGB colours packed into one id."""
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., :3].astype(np.int32)
        return (array[..., 0] << 16) | (array[..., 1] << 8) | array[..., 2]
    return array.astype(np.int32)


def _file_of(row: dict) -> str:
    """'<label file>: ' for rows read from files (a folder source), else nothing."""
    label = row.get("label")
    path = label.get("path") if isinstance(label, dict) and not label.get("bytes") else None
    return f"{path}: " if path else ""


def parse_size(size: int | Sequence[int]) -> tuple[int, int]:
    """`256` or `[H, W]` -> (H, W), with a clear error for anything else."""
    if isinstance(size, int):
        size = (size, size)
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"data.size must be an int or [height, width], got {size!r}") from None
    if height < 8 or width < 8 or height > 4096 or width > 4096:
        raise ValueError(f"data.size must lie in 8..4096 per side, got {height}x{width}")
    return height, width


def resize_pair(
    image: np.ndarray, label: np.ndarray, size: tuple[int, int], mode: str = "stretch",
    instance: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """Resize image (Lanczos) and label (nearest, so no interpolated ids) to `size` = (H, W);
    with `instance` (int32 ids), that too, nearest and in the label's geometry, returned third.

    ``stretch`` scales both axes to the size; ``crop`` scales the shorter side to cover the
    size and centre-crops the rest, keeping the aspect ratio.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"data.resize must be one of {RESIZE_MODES}, got {mode!r}")
    height, width = size
    src_h, src_w = label.shape
    if (src_h, src_w) == (height, width):
        return (image, label) if instance is None else (image, label, instance)
    if mode == "stretch":
        scaled = (width, height)
    else:
        scale = max(height / src_h, width / src_w)
        scaled = (max(width, round(src_w * scale)), max(height, round(src_h * scale)))
    left, top = (scaled[0] - width) // 2, (scaled[1] - height) // 2
    box = (left, top, left + width, top + height)

    def fit(picture: Image.Image, resample: Image.Resampling) -> np.ndarray:
        resized = picture.resize(scaled, resample, reducing_gap=2.0 if resample == Image.Resampling.LANCZOS else None)
        return np.asarray(resized.crop(box) if scaled != (width, height) else resized)

    out = (fit(Image.fromarray(image), Image.Resampling.LANCZOS), fit(Image.fromarray(label), Image.Resampling.NEAREST))
    if instance is None:
        return out
    return (*out, fit(Image.fromarray(instance.astype(np.int32), "I"), Image.Resampling.NEAREST).astype(np.int32))


def read_rgb_file(path: Path, size: tuple[int, int] | None = None, what: str = "image file") -> np.ndarray:
    """H x W x 3 uint8 of an image file, resized (Lanczos) to `size` = (H, W) when it differs;
    a file that cannot be decoded is a DataError naming it."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{what} '{path}' cannot be read: {err}") from None
    if size is not None and rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return np.asarray(rgb)
