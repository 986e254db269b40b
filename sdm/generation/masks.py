"""The masks to generate from: a split of the run's data (or of another data source), or a folder of
label PNGs; optionally varied (flipped, cropped) for layouts the data does not hold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError

from sdm.core.errors import ConfigError, DataError
from sdm.data.classes import CLASS_NAMES, ClassTable, class_table
from sdm.data.prepare import decode_instance, decode_row, prepare_data, split_indices
from sdm.data.rows import as_table, label_to_ids, read_rgb_file
from sdm.data.sources import SOURCES, overlay_source
from sdm.generation.weights import Model


@dataclass(frozen=True)
class Mask:
    """One condition: a file stem, its position (the seed offset), class ids, maybe the photo."""

    name: str
    index: int
    label: np.ndarray  # H x W uint8 class ids at the training size
    real: np.ndarray | None = None  # H x W x 3 uint8
    instance: np.ndarray | None = None  # H x W int32 instance ids: the edge channel's source when given
    count: int | None = None  # images to make for it (hardness re-sampling); None: num_per_mask

    def images(self, per_mask: int) -> int:
        return per_mask if self.count is None else self.count



SPLITS = ("val", "train", "all")
INSTANCES = "instances"  # <set>/labels/x.png -> <set>/instances/x.png (SPADE's COCO-Stuff: <split>_label, _inst)
VARIATIONS = ("hflip", "crop", "paste")
CROP_SIDE = (0.6, 0.9)  # a crop keeps this fraction of each side (36-81 % of the area)


def mask_variations(cfg: DictConfig) -> list[str]:
    """sample.py's mask_variation in the order they are applied (flip, crop, then paste), once each."""
    chosen = set(cfg.get("mask_variation") or [])
    return [v for v in VARIATIONS if v in chosen]


def mask_source(cfg: DictConfig) -> dict[str, Any] | None:
    """sample.py's mask_source as a plain dict (None when the masks come from the run's own data)."""
    source = cfg.get("mask_source")
    if not source:
        return None
    plain = OmegaConf.to_container(source, resolve=True)
    if "path" in plain and Path(str(plain["path"])).expanduser().exists():  # another spelling resumes
        plain["path"] = str(Path(str(plain["path"])).expanduser().resolve())
    return plain


def source_data(train_cfg: dict[str, Any], source: dict[str, Any] | None) -> DictConfig:
    """The run's data settings, or `mask_source` laid over them (sdm.data.sources.overlay_source)."""
    if source:
        return overlay_source(train_cfg["data"], source, "mask_source")
    data = OmegaConf.create(train_cfg["data"])
    data.extra = None  # a mixed run's synthetic rows are never used as masks
    return data


def split_masks(train_cfg: dict[str, Any], split: str, limit: int | None,
                source: dict[str, Any] | None = None) -> list[Mask]:
    """Rows of one split of the run's data (same cache, same split seed), with their photos."""
    data = source_data(train_cfg, source)
    where = "mask_source" if source else "the run's data"
    if data.get("name") not in SOURCES:  # e.g. a model converted from the official code (ADE20K, COCO)
        raise ConfigError(f"masks={split}: {where} is data.name={data.get('name')}, which this project cannot load "
                          f"(it loads {', '.join(SOURCES)}); pass masks=<folder of label PNGs>")
    if OmegaConf.is_missing(data, "path"):  # a converted official checkpoint: its dataset, not its place
        raise ConfigError(f"masks={split}: {where} names no data.path (a converted official checkpoint of "
                          f"data={data.get('layout') or data.get('name')}): pass mask_source={{path:<the dataset's "
                          f"folder>}}, or masks=<folder of label PNGs>")
    if data.get("streaming"):
        raise ConfigError(f"masks={split}: {where} is streamed (data.streaming=true), split by a hash of each "
                          "label, with no prepared cache to read; take the masks from a prepared copy with "
                          "'mask_source={streaming:false}' (its split is by position, not the run's), or pass "
                          "masks=<folder of label PNGs>")
    prepared = prepare_data(data)
    if split == "all":
        rows_of_split = np.arange(len(prepared))
    else:
        train, val = split_indices(len(prepared), float(data.val_fraction), int(data.split_seed))
        rows_of_split = val if split == "val" else train
    if len(rows_of_split) == 0:
        raise DataError(f"masks={split}: the {split} split of {where} is empty (data.val_fraction="
                        f"{data.val_fraction}); pass another split or masks=<folder of label PNGs>")
    rows = prepared.open()
    masks = []
    for position, row_index in enumerate(rows_of_split[:limit]):
        row = rows[int(row_index)]
        image, label = decode_row(row, prepared.size)
        instance = decode_instance(row, prepared.size)  # the edge channel's source, where the data has one
        masks.append(Mask(f"{int(row['index']):06d}", position, label.copy(), image.copy(),
                          None if instance is None else instance.copy()))
    return masks


def val_masks(train_cfg: dict[str, Any], limit: int | None) -> list[Mask]:
    """The validation split of the run's own data, with the photos."""
    return split_masks(train_cfg, "val", limit)


def crop_box(shape: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop of the same aspect ratio."""
    side = rng.uniform(*CROP_SIDE)
    height, width = max(1, round(shape[0] * side)), max(1, round(shape[1] * side))
    top, left = int(rng.integers(0, shape[0] - height + 1)), int(rng.integers(0, shape[1] - width + 1))
    return top, left, height, width


def vary_mask(mask: Mask, variations: Sequence[str], seed: int) -> Mask:
    """A new layout from a mask: mirrored and/or a random crop scaled back (labels nearest,
    the photo bilinear, so both still match); the crop is drawn from (seed, mask index)."""
    label, real, name, instance = mask.label, mask.real, mask.name, mask.instance
    if "hflip" in variations:
        label, real, name = label[:, ::-1], None if real is None else real[:, ::-1], f"{name}-flip"
        instance = None if instance is None else instance[:, ::-1]
    if "crop" in variations:
        top, left, height, width = crop_box(label.shape, np.random.default_rng([seed, mask.index]))
        size = (label.shape[1], label.shape[0])
        box = (left, top, left + width, top + height)
        label = np.asarray(Image.fromarray(np.ascontiguousarray(label)).crop(box).resize(size, Image.Resampling.NEAREST))
        if real is not None:
            real = np.asarray(Image.fromarray(np.ascontiguousarray(real)).crop(box).resize(size, Image.Resampling.BILINEAR))
        if instance is not None:
            instance = np.asarray(Image.fromarray(np.ascontiguousarray(instance)).crop(box).resize(size, Image.Resampling.NEAREST))
        name = f"{name}-crop"
    return Mask(name, mask.index, np.ascontiguousarray(label),
                None if real is None else np.ascontiguousarray(real),
                None if instance is None else np.ascontiguousarray(instance))


# pasting: people and vehicles of another mask, drawn only over ground (the sidewalk class table)
PASTED = tuple(i for i, name in enumerate(CLASS_NAMES) if name.startswith(("human-", "vehicle-")))
GROUND = tuple(i for i, name in enumerate(CLASS_NAMES)
               if name.startswith("flat-") or name in ("nature-terrain", "void-ground"))


def paste_objects(mask: Mask, donor: Mask) -> Mask:
    """`mask` with the people and vehicles of `donor` drawn in where they stand on this mask's
    ground (road, sidewalk, crosswalk, terrain ...); over anything else (a wall, a pole) the
    mask's own pixels stay in front. Its photo no longer matches and is dropped, and its edges
    come from the classes."""
    objects = np.isin(donor.label, PASTED) & np.isin(mask.label, GROUND)
    label = mask.label.copy()
    label[objects] = donor.label[objects]
    return Mask(f"{mask.name}-paste", mask.index, label, None, None)


def paste_donors(masks: Sequence[Mask], seed: int) -> list[Mask]:
    """Each mask with the objects of another, drawn from (seed, its position): new scenes whose
    every class sits where the data has it."""
    if len(masks) < 2:
        raise ConfigError("mask_variation=[paste] needs at least 2 masks: it draws the objects of one into another")
    pasted = []
    for i, mask in enumerate(masks):
        j = int(np.random.default_rng([seed, mask.index, 7]).integers(0, len(masks) - 1))
        pasted.append(paste_objects(mask, masks[j if j < i else j + 1]))  # any other mask
    return pasted


def read_mask(path: Path, size: tuple[int, int], classes: ClassTable | int) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Class ids of a label PNG (mode L ids, or the table's colours) at `size`, and its size if resized."""
    try:
        with Image.open(path) as image:
            image.load()
            ids = label_to_ids(image, as_table(classes).for_id_maps())
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


def read_instance(path: Path, size: tuple[int, int], label_size: tuple[int, int] | None = None) -> np.ndarray:
    """Instance ids (H x W int32) of an instance PNG at `size`, resized like the labels (nearest):
    grey, palette and 16/32-bit values are ids, each RGB colour is one id. It must be as large as
    its label map (`label_size`, H x W), or its edges would not fall on the label's."""
    try:
        with Image.open(path) as image:
            image.load()
            if label_size is not None and image.size != (label_size[1], label_size[0]):
                raise ValueError(f"it is {image.size[0]}x{image.size[1]} but its label map is "
                                 f"{label_size[1]}x{label_size[0]}")
            if image.mode.startswith("I;16"):
                image = image.convert("I")
            elif image.mode == "RGBA":
                image = image.convert("RGB")
            if image.mode not in ("L", "P", "I", "RGB"):
                raise ValueError(f"unsupported mode {image.mode!r}; expected ids (L, P, I, I;16) or RGB colours")
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.NEAREST)
            ids = np.asarray(image).astype(np.int32)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"instance map '{path}' cannot be used: {err}") from None
    return (ids[..., 0] << 16 | ids[..., 1] << 8 | ids[..., 2]) if ids.ndim == 3 else ids


def folder_masks(folder: Path, size: tuple[int, int], classes: ClassTable | int, limit: int | None,
                 instances: bool = False) -> list[Mask]:
    """Label PNGs of a folder in name order; photos come from a sibling images/ folder if present,
    and with `instances` the instance maps of the same names from a sibling instances/ folder."""
    if not folder.is_dir():
        raise DataError(f"masks={folder}: neither one of {'|'.join(SPLITS)} nor an existing folder of label PNGs")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    if not files:
        raise DataError(f"masks={folder}: the folder holds no .png label files")
    photos, instance_dir = folder.parent / "images", folder.parent / INSTANCES
    masks, resized = [], []
    for position, path in enumerate(files[:limit]):
        label, original = read_mask(path, size, classes)
        if original is not None:
            resized.append(f"{path.name} ({original[1]}x{original[0]})")
        real = read_real(photos / path.name, size) if photos.resolve() != folder.resolve() else None
        instance_file = instance_dir / path.name
        use_instance = instances and instance_dir.resolve() != folder.resolve() and instance_file.is_file()
        instance = read_instance(instance_file, size, original or size) if use_instance else None
        masks.append(Mask(path.stem, position, label, real, instance))
    if resized:
        print(f"resized {len(resized)} of {len(masks)} masks to the training size {size[1]}x{size[0]} "
              f"(nearest, aspect ratio not kept): {', '.join(resized[:5])}{' ...' if len(resized) > 5 else ''}")
    return masks


def edge_source(masks: Sequence[Mask], where: str) -> str:
    """Which maps the edge channel is drawn from, for the log."""
    found = sum(m.instance is not None for m in masks)
    if found == 0:
        return f"edge channel: class boundaries of the label maps (no instance maps {where})"
    if found == len(masks):
        return f"edge channel: instance boundaries from the instance maps {where} (all {found} masks)"
    return (f"edge channel: instance boundaries for the {found} of {len(masks)} masks with an instance map "
            f"{where}, class boundaries for the others")


def load_masks(spec: str, model: Model, limit: int | None, source: dict[str, Any] | None = None,
               variations: Sequence[str] = (), seed: int = 0) -> list[Mask]:
    """The masks of sample.py's `masks` (val | train | all | a folder), varied as asked."""
    unknown = sorted(set(variations) - set(VARIATIONS))
    if unknown:
        raise ConfigError(f"mask_variation={list(variations)}: unknown {unknown}; expected a list of {list(VARIATIONS)}")
    table = class_table(model.cfg["data"])
    if "paste" in variations and table.names != CLASS_NAMES:
        raise ConfigError(f"mask_variation=[paste] knows which classes are objects and ground in the sidewalk table "
                          f"({len(CLASS_NAMES)} classes); this model's table is '{table.name}' ({table.num_classes})")
    if spec in SPLITS:
        masks, where = split_masks(model.cfg, spec, limit, source), "in the data"
    elif source:
        raise ConfigError(f"mask_source is for masks={'|'.join(SPLITS)}, not for a folder of label PNGs ({spec})")
    else:
        folder = Path(spec).expanduser()
        masks = folder_masks(folder, model.size, table, limit, instances=model.unet.edge_channel)
        where = f"in {folder.parent / INSTANCES}"
    if model.unet.edge_channel:
        print(edge_source(masks, where))
    geometric = [v for v in variations if v != "paste"]
    masks = [vary_mask(m, geometric, seed) for m in masks] if geometric else masks
    return paste_donors(masks, seed) if "paste" in variations else masks
