"""Class tables: what each label id means, its colour, and how a label file's values become ids.

A table is config (`conf/data/classes/<name>.yaml`, the `data.classes` group), so that a dataset
brings its own: names, palette, the one id that means "no class" (`ignore`), and a mapping from
the values stored in its files to the model's label channels (`offset`, `remap`, `unmapped`), as
the paper's code reads ADE20K (v -> v - 1, 0 -> 150) and COCO-Stuff (255 -> 182).

The module-level names (`CLASS_NAMES`, `PALETTE`, `colorize`, ...) are the sidewalk table's,
the default of every run that names no other.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from sdm.core.configs import CONFIG_DIR
from sdm.core.errors import ConfigError

LABEL_FORMATS = ("ids", "color", "auto")  # auto: ids, or an RGB map in the table's colours
MAX_ID = 255  # labels are stored as uint8


def voc_colours(count: int, avoid: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """The first `count` colours of the PASCAL VOC bit pattern (id order) that are not in `avoid`:
    distinct, and those of a table's own palette left to it."""
    own = {tuple(int(v) for v in c) for c in avoid}
    colours: list[list[int]] = []
    i = 0
    while len(colours) < count:
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((i >> (3 * bit + channel)) & 1) << (7 - bit)
        if tuple(rgb) not in own:
            colours.append(rgb)
        i += 1
    return np.array(colours, dtype=np.uint8).reshape(count, 3)


@dataclass(frozen=True, eq=False)
class ClassTable:
    """One dataset's classes. `lookup[v]` is the id of file value v (-1: not in the table), or
    None when the files hold the ids themselves."""

    name: str
    names: tuple[str, ...]
    palette: np.ndarray  # len(names) x 3 uint8
    ignore: int | None = None
    lookup: np.ndarray | None = None
    label_format: str = "ids"
    instances: bool = False
    full_palette: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        extra = voc_colours(MAX_ID + 1 - len(self.names), avoid=self.palette) if len(self.names) <= MAX_ID else []
        full = np.concatenate([self.palette, np.asarray(extra, dtype=np.uint8).reshape(-1, 3)])
        object.__setattr__(self, "full_palette", full)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def distinct_colours(self) -> bool:
        return len({tuple(c) for c in self.palette.tolist()}) == self.num_classes

    def ids_from_values(self, values: np.ndarray) -> np.ndarray:
        """A label file's values -> class ids (uint8); ValueError naming the values the table does
        not cover, their pixel count and the likely mistake."""
        values = np.asarray(values).astype(np.int64)
        if self.lookup is None:
            ids = values
        else:
            inside = (values >= 0) & (values < len(self.lookup))
            ids = np.where(inside, self.lookup[np.clip(values, 0, len(self.lookup) - 1)], -1)
        bad = (ids < 0) | (ids >= self.num_classes)
        if bad.any():
            found = np.unique(values[bad])
            raise ValueError(
                f"values {found[:8].tolist()}{' ...' if len(found) > 8 else ''} in {int(bad.sum())} pixels are not "
                f"classes of the '{self.name}' table (ids 0..{self.num_classes - 1}{self._mapping_note()})"
                f"{self._hint(np.unique(values))}")
        return ids.astype(np.uint8)

    def _mapping_note(self) -> str:
        return "" if self.lookup is None else ", after its remap"

    def _hint(self, found: np.ndarray) -> str:
        found_set = set(found.tolist())
        if found_set <= {0, 255} and 255 in found_set:
            return ("; this looks like a binary 0/255 mask: for one foreground class use "
                    "data/classes=generic data.classes.count=2 data.classes.remap={255:1}")
        if found.max() >= self.num_classes and self.lookup is None:
            return (f"; the files hold ids up to {int(found.max())}: are they another dataset's (data/classes=ade20k, "
                    f"coco_stuff, cityscapes, celebamask) or does the table need a remap?")
        return ""

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """H x W class ids (0..255) -> H x W x 3 uint8 RGB in the table's colours (ids past the
        table get colours of their own, so any model's output can be drawn)."""
        label = np.asarray(label)
        if label.size and (label.min() < 0 or label.max() >= len(self.full_palette)):
            raise ValueError(
                f"label ids must lie in 0..{len(self.full_palette) - 1}, got {int(label.min())}..{int(label.max())}")
        return self.full_palette[label.astype(np.int64)]

    def decolorize(self, rgb: np.ndarray) -> np.ndarray:
        """Invert `colorize` for the table's own colours; ValueError for any other colour."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"expected an H x W x 3 RGB mask, got shape {rgb.shape}")
        if not self.distinct_colours:
            raise ValueError(f"the '{self.name}' table gives several classes one colour, so an RGB label map "
                             f"cannot be read with it; give id maps (mode L) instead")
        keys = _colour_keys(rgb.astype(np.int64))
        own = _colour_keys(self.palette.astype(np.int64))
        order = np.argsort(own)
        pos = np.clip(np.searchsorted(own[order], keys), 0, self.num_classes - 1)
        found = own[order][pos] == keys
        if not found.all():
            y, x = np.argwhere(~found)[0]
            raise ValueError(
                f"colour {tuple(int(v) for v in rgb[y, x])} at pixel (row {y}, col {x}) is not in the "
                f"'{self.name}' palette ({int((~found).sum())} such pixels); expected one of its "
                f"{self.num_classes} colours (data.classes.palette)")
        return order[pos].astype(np.uint8)

    def for_id_maps(self) -> ClassTable:
        """This table for label files that already hold its ids (this project's own label PNGs: a
        sample folder's labels/, an export's, mask folders): no value mapping, and RGB read in the
        table's colours where they are distinct."""
        if self.lookup is None and self.label_format != "ids":
            return self
        return _ids_form(self)

    def summary(self) -> dict[str, Any]:
        """What a report records of its table: enough to name and draw every class."""
        return {"table": self.name, "ignore": self.ignore, "names": list(self.names), "palette": self.palette.tolist()}


@functools.lru_cache(maxsize=32)
def _ids_form(table: ClassTable) -> ClassTable:
    fmt = "auto" if table.distinct_colours else "ids"
    return ClassTable(table.name, table.names, table.palette, table.ignore, None, fmt, table.instances)


def _colour_keys(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def table_from_config(cfg: Mapping[str, Any], where: str = "data.classes") -> ClassTable:
    """A ClassTable from its config (a `conf/data/classes/*.yaml` group, maybe overridden); every
    inconsistency is a ConfigError naming the field."""
    cfg = dict(cfg)
    names, count = cfg.get("names"), cfg.get("count")
    if names is None:
        if not isinstance(count, int) or count < 1:
            raise ConfigError(f"{where}: give names (a list) or count (the number of classes), got count={count!r}")
        names = [f"class {i}" for i in range(count)]
    names = tuple(str(n) for n in names)
    if count is not None and count != len(names):
        raise ConfigError(f"{where}.count={count} but {where}.names lists {len(names)} classes")
    if not 1 <= len(names) <= MAX_ID + 1:
        raise ConfigError(f"{where}: {len(names)} classes; a table holds 1 to {MAX_ID + 1} (labels are 8-bit)")
    palette = _palette(cfg.get("palette", "auto"), len(names), where)
    ignore = cfg.get("ignore")
    if ignore is not None and not 0 <= int(ignore) < len(names):
        raise ConfigError(f"{where}.ignore={ignore} is not a class id (0..{len(names) - 1}); use null for none")
    label_format = str(cfg.get("label_format", "ids"))
    if label_format not in LABEL_FORMATS:
        raise ConfigError(f"{where}.label_format={label_format!r}; expected one of {LABEL_FORMATS}")
    table = ClassTable(str(cfg.get("name") or "custom"), names, palette, None if ignore is None else int(ignore),
                       _lookup(cfg, len(names), where), label_format, bool(cfg.get("instances", False)))
    if label_format == "color" and not table.distinct_colours:
        raise ConfigError(f"{where}: label_format=color needs one colour per class; the palette repeats colours")
    return table


def _palette(value: Any, count: int, where: str) -> np.ndarray:
    if value is None or value == "auto":
        return voc_colours(count)
    try:
        palette = np.asarray([[int(v) for v in colour] for colour in value], dtype=np.int64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.palette: expected 'auto' or a list of [r, g, b], got {value!r}") from None
    if palette.shape != (count, 3) or palette.min() < 0 or palette.max() > 255:
        raise ConfigError(f"{where}.palette: expected {count} colours [r, g, b] in 0..255 (one per class), "
                          f"got shape {list(palette.shape)}")
    return palette.astype(np.uint8)


def _lookup(cfg: Mapping[str, Any], count: int, where: str) -> np.ndarray | None:
    """file value -> id for values 0..255: the remap's entries, and for the other values either
    `unmapped` (an id: the remap is a complete mapping, as labelId -> trainId) or value + offset
    where that is a class at most `max_value`, else -1 (refused)."""
    offset, remap, unmapped = int(cfg.get("offset") or 0), dict(cfg.get("remap") or {}), cfg.get("unmapped")
    max_value = int(cfg.get("max_value", MAX_ID))
    if not offset and not remap and unmapped is None and max_value == MAX_ID:
        return None
    values = np.arange(MAX_ID + 1)
    if unmapped is None:  # value + offset where that is a class
        lookup = values + offset
        lookup[(lookup < 0) | (lookup >= count) | (values > max_value)] = -1
    else:  # a complete mapping: what the remap does not list becomes `unmapped`
        if not 0 <= int(unmapped) < count:
            raise ConfigError(f"{where}.unmapped={unmapped} is not a class id (0..{count - 1}); use null to refuse them")
        lookup = np.full(MAX_ID + 1, int(unmapped))
    for source, target in remap.items():
        if not 0 <= int(source) <= MAX_ID or not 0 <= int(target) < count:
            raise ConfigError(f"{where}.remap: {source} -> {target}; file values lie in 0..{MAX_ID} and ids in "
                              f"0..{count - 1}")
        lookup[int(source)] = int(target)
    return lookup


@functools.lru_cache(maxsize=32)
def _table_of(frozen: str, where: str) -> ClassTable:
    return table_from_config(json.loads(frozen), where)


def preset(name: str) -> ClassTable:
    """A table shipped in conf/data/classes (sidewalk, ade20k, cityscapes, coco_stuff, celebamask)."""
    path = CONFIG_DIR / "data" / "classes" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"no class table '{name}'; the shipped ones are {known}")
    return _table_of(json.dumps(yaml.safe_load(path.read_text())), f"data/classes={name}")


def class_table(data: Any) -> ClassTable:
    """The table of a `data` config. Configs written before tables existed (saved runs) have none:
    35 label channels are sidewalk's, any other count a generic table of that many classes."""
    from omegaconf import OmegaConf

    get = data.get if hasattr(data, "get") else (lambda key, default=None: default)
    classes = get("classes")
    num_classes = get("num_classes")
    if classes is None:
        if num_classes in (None, SIDEWALK.num_classes):
            return SIDEWALK
        return _table_of(json.dumps({"name": "generic", "count": int(num_classes)}), "data.num_classes")
    plain = OmegaConf.to_container(classes, resolve=True) if OmegaConf.is_config(classes) else dict(classes)
    table = _table_of(json.dumps(plain, sort_keys=True), "data.classes")
    if num_classes is not None and int(num_classes) != table.num_classes:
        raise ConfigError(f"data.num_classes={num_classes} but the class table '{table.name}' (data.classes) has "
                          f"{table.num_classes} classes; they must agree (the model's label channels)")
    return table


SIDEWALK: ClassTable = preset("sidewalk")
CLASS_NAMES: tuple[str, ...] = SIDEWALK.names
NUM_CLASSES: int = SIDEWALK.num_classes
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
PALETTE: np.ndarray = SIDEWALK.palette
FULL_PALETTE: np.ndarray = SIDEWALK.full_palette  # PALETTE, then colours for ids 35..255 (other datasets' models)
colorize = SIDEWALK.colorize
decolorize = SIDEWALK.decolorize
