"""The page's label maps: painted strokes snapped to the class palette, uploads checked, a zip to take away.

Kept free of Gradio so that the rules a user meets (which colour becomes which class, which upload is
refused and why) are tested without a browser.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import distance_transform_edt

from sdm.data.classes import ClassTable
from sdm.data.rows import RowError, label_to_ids

LABEL_FIELD = "field 'label': "  # how the row checks name the field; an upload is the label itself


class MaskError(ValueError):
    """A label map the page cannot use; the message is shown in the page as it is."""


def snap_to_palette(rgb: np.ndarray, table: ClassTable, tolerance: int = 24) -> np.ndarray:
    """H x W class ids of a painted colour image.

    A canvas draws strokes anti-aliased: their edges blend two classes' colours into shades that
    belong to no class, and in a dense palette a blend can even land on a third class's colour (in
    the sidewalk palette, halfway from black to person's red is bicycle's). So a pixel whose colour
    lies between the colours of two opposite neighbours is a blend, and takes the class of the nearest
    pixel that is not one; every other pixel takes the class colour nearest to it. A pixel already in
    the palette, inside a region of its colour, keeps its class."""
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise MaskError(f"a painted mask is an H x W x 3 colour image, got shape {tuple(rgb.shape)}")
    colours = rgb[..., :3].astype(np.float64)
    pixels = colours.reshape(-1, 1, 3)
    distances = ((pixels - table.palette.astype(np.float64)[None]) ** 2).sum(-1)
    ids = distances.argmin(-1).reshape(rgb.shape[:2]).astype(np.uint8)
    blend = blended_pixels(colours, tolerance)
    if not blend.any() or blend.all():
        return ids
    _, (rows, cols) = distance_transform_edt(blend, return_indices=True)
    return ids[rows, cols]


def blended_pixels(colours: np.ndarray, tolerance: float) -> np.ndarray:
    """H x W: True where a pixel's colour lies strictly between the colours of its two neighbours
    left and right (or above and below), within `tolerance` of the line between them, and differs
    from both: a pixel with a neighbour of its own colour on that axis belongs to a region."""
    height, width = colours.shape[:2]
    padded = np.pad(colours, ((1, 1), (1, 1), (0, 0)), mode="edge")

    def shifted(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    blend = np.zeros((height, width), bool)
    for dy, dx in ((0, 1), (1, 0)):
        a, b = shifted(dy, dx), shifted(-dy, -dx)
        span = a - b
        length = (span**2).sum(-1)
        t = ((colours - b) * span).sum(-1) / np.maximum(length, 1e-9)
        off_line = ((colours - (b + t[..., None] * span)) ** 2).sum(-1)
        apart = (((colours - a) ** 2).sum(-1) > tolerance**2) & (((colours - b) ** 2).sum(-1) > tolerance**2)
        blend |= apart & (t > 0.1) & (t < 0.9) & (off_line <= tolerance**2)
    return blend


def painted_ids(editor: dict | None, table: ClassTable, size: tuple[int, int]) -> np.ndarray:
    """Class ids of an image editor's value ({"composite": H x W x 3|4 array, ...}) at the model's size."""
    composite = None if editor is None else editor.get("composite")
    if composite is None:
        raise MaskError("nothing painted yet: pick a validation mask or upload one to paint over")
    array = np.asarray(composite)
    if array.shape[:2] != tuple(size):
        raise MaskError(f"the painted mask is {array.shape[1]}x{array.shape[0]} (width x height); this model "
                        f"makes {size[1]}x{size[0]} images: start again from a validation mask")
    if array.ndim == 3 and array.shape[-1] == 4 and (array[..., 3] == 0).any():
        raise MaskError("part of the canvas is transparent (erased to nothing): paint every pixel with a class")
    return snap_to_palette(array, table)


def uploaded_ids(path: str | Path, table: ClassTable, size: tuple[int, int]) -> np.ndarray:
    """Class ids of an uploaded label PNG (class ids, a palette image, or colours of the table), refused
    with a message naming the file when its size, colours or ids do not fit this model."""
    name = Path(path).name
    try:
        with Image.open(path) as image:
            image.load()
            found = (image.height, image.width)
            ids = None if found != tuple(size) else label_to_ids(image, table)
    except RowError as err:
        raise MaskError(f"{name}: {str(err).removeprefix(LABEL_FIELD)}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise MaskError(f"{name} cannot be read as an image ({err})") from None
    if ids is None:
        raise MaskError(f"{name} is {found[1]}x{found[0]} (width x height); this model makes {size[1]}x{size[0]} "
                        f"images: upload a label map of that size")
    return ids


def bundle(images: Sequence[Image.Image], ids: np.ndarray, table: ClassTable, name: str, out: Path) -> Path:
    """A zip of the images, the label PNG (class ids, mode L) and the coloured mask, laid out as
    sample.py lays out a generation (images/, labels/, colored_masks/)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as archive:
        for k, image in enumerate(images):
            archive.writestr(f"images/{name}_{k}.png", encoded_png(image))
        archive.writestr(f"labels/{name}.png", encoded_png(Image.fromarray(ids.astype(np.uint8), "L")))
        archive.writestr(f"colored_masks/{name}.png", encoded_png(Image.fromarray(table.colorize(ids))))
    return out


def encoded_png(image: Image.Image) -> bytes:
    """The PNG file of an image, in memory (for the zip)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
