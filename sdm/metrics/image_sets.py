"""The image sets an evaluation reads: what `sample.py` wrote, or any pair of folders.

A set is a list of masks, each with its class ids, the files of the images generated for
it and, when there is one, the real photo. Metrics read files only, so another model's
output, an export, or the real images themselves are scored the same way.

Plain folders pair by file name: `labels/<mask>.png` goes with `images/<mask>.png` or
`images/<mask>_<k>.png` (several samples per mask), and `real/<mask>.png` when given.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from sdm.core.errors import DataError
from sdm.data.classes import SIDEWALK, ClassTable, class_table
from sdm.data.rows import as_table, label_to_ids

MANIFEST = "manifest.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SAMPLE_SUFFIX = re.compile(r"^(?P<mask>.+)_(?P<k>\d+)$")


@dataclass(frozen=True)
class MaskEntry:
    """One mask of the set: its name, class ids and the files that belong to it."""

    name: str
    label: np.ndarray  # H x W uint8 class ids
    samples: tuple[Path, ...]
    real: Path | None = None


@dataclass(frozen=True)
class ImageSet:
    """The masks of an evaluation and where they came from."""

    root: Path
    kind: str  # "samples" (a sample.py folder) or "folders"
    entries: list[MaskEntry]
    settings: dict[str, Any] = field(default_factory=dict)  # sample.py's settings, if any
    train_data: dict[str, Any] | None = None  # the data config of the run whose model made them
    run_dir: Path | None = None
    weights: dict[str, Any] | None = None  # what sample.py recorded of the weights it used
    table: ClassTable = SIDEWALK  # what the label ids mean: names, colours, the id not scored

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.entries[0].label.shape)  # type: ignore[return-value]

    @property
    def num_images(self) -> int:
        return sum(len(e.samples) for e in self.entries)


def read_label(path: Path, classes: ClassTable | int) -> np.ndarray:
    """Class ids of a label PNG (mode L ids, or the table's colours), with the file named on failure."""
    try:
        with Image.open(path) as image:
            image.load()
            return label_to_ids(image, as_table(classes).for_id_maps())
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = str(err).removeprefix("field 'label': ")
        raise DataError(f"label file '{path}' cannot be used: {reason}") from None


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} '{path}' is missing")
    return path


def from_sample_folder(folder: str | Path, classes: ClassTable | int | None = None) -> ImageSet:
    """The set a finished `sample.py` run wrote (its manifest.json lists every file), read with
    `classes`, else with the class table of the run that made it."""
    root = Path(folder).expanduser()
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"samples={root}: no {MANIFEST} there, so not a sample.py output; for other images "
                        "pass images=<folder> labels=<folder> instead")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{manifest_path} cannot be read: {err}") from None
    if not manifest.get("complete"):
        raise DataError(f"samples={root}: the generation there is not finished (manifest 'complete' is false); "
                        "run the same sample.py command again to finish it, then evaluate")
    table = as_table(classes) if classes is not None else class_table(manifest.get("train_data") or {})
    entries = []
    for item in manifest.get("items", []):
        label = read_label(_require_file(root / item["label"], f"label of mask {item['mask']!r}"), table)
        samples = tuple(_require_file(root / p, f"sample of mask {item['mask']!r}") for p in item["images"])
        real = root / item["real"] if item.get("real") else None
        entries.append(MaskEntry(str(item["mask"]), label, samples, real if real and real.is_file() else None))
    if not entries:
        raise DataError(f"{manifest_path} lists no masks")
    run = manifest.get("weights", {}).get("run_dir")
    return ImageSet(root, "samples", entries, manifest.get("settings", {}), manifest.get("train_data"),
                    Path(run) if run else None, manifest.get("weights"), table)


def _images_in(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{what}={folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DataError(f"{what}={folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def mask_of(image_stem: str, masks: set[str]) -> str | None:
    """The mask an image file belongs to: `<mask>` itself, or `<mask>_<k>`."""
    if image_stem in masks:
        return image_stem
    match = SAMPLE_SUFFIX.match(image_stem)
    return match["mask"] if match and match["mask"] in masks else None


def from_folders(images: str | Path, labels: str | Path, real: str | Path | None = None,
                 classes: ClassTable | int | None = None) -> ImageSet:
    """A set from an images folder and a labels folder of the same file names (see module doc),
    its labels read with `classes` (sidewalk's by default)."""
    images, labels = Path(images).expanduser(), Path(labels).expanduser()
    table = as_table(classes)
    label_files = {p.stem: p for p in _images_in(labels, "labels")}
    grouped: dict[str, list[Path]] = {name: [] for name in label_files}
    orphans = []
    for path in _images_in(images, "images"):
        mask = mask_of(path.stem, set(label_files))
        if mask is None:
            orphans.append(path.name)
        else:
            grouped[mask].append(path)
    if orphans:
        raise DataError(f"images={images}: {len(orphans)} file(s) match no label in {labels} "
                        f"(expected <mask>.png or <mask>_<k>.png): {', '.join(orphans[:5])}")
    lonely = [name for name, files in grouped.items() if not files]
    if lonely:
        raise DataError(f"labels={labels}: {len(lonely)} label(s) have no image in {images}: "
                        f"{', '.join(lonely[:5])}")
    real_files = {p.stem: p for p in _images_in(Path(real).expanduser(), "real")} if real else {}
    entries = [MaskEntry(name, read_label(label_files[name], table), tuple(grouped[name]), real_files.get(name))
               for name in sorted(label_files)]
    shapes = {e.label.shape for e in entries}
    if len(shapes) > 1:
        raise DataError(f"labels={labels}: the label maps differ in size ({sorted(shapes)[:4]}); an evaluation "
                        "compares images of one size")
    return ImageSet(images.parent, "folders", entries, table=table)
