"""Run-once preparation: validate every row, resize once, cache as memory-mapped Arrow.

The cache folder is named after the source, size and resize mode, so a second run with the
same settings reuses it. It is built under a temporary name and renamed when complete, so an
interrupted or refused preparation never leaves a half-written cache behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets.arrow_writer import ArrowWriter
from tqdm.auto import tqdm

from sdm.core.atomic import remove_leftovers, temporary_name
from sdm.core.errors import DataError
from sdm.core.places import check_output_folder
from sdm.core.viz import save_png
from sdm.data.classes import ClassTable, class_table
from sdm.data.pictures import class_frequency_chart, pairs_grid
from sdm.data.rows import RowError, clean_row, parse_size, resize_pair
from sdm.data.sources import load_source, source_key

ARROW_FILE = "data.arrow"
INFO_FILE = "dataset_info.json"
FEATURES = datasets.Features(
    {"index": datasets.Value("int64"), "image": datasets.Value("binary"), "label": datasets.Value("binary")}
)
INSTANCE_FEATURES = datasets.Features({**FEATURES, "instance": datasets.Value("binary")})  # + int32 instance ids
MAX_LISTED_PROBLEMS = 10


@dataclass(frozen=True)
class PreparedData:
    """A finished cache: rows of raw uint8 image/label bytes at `size`, plus its statistics."""

    root: Path
    info: dict[str, Any]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.info["size"])  # type: ignore[return-value]

    def open(self) -> datasets.Dataset:
        """The rows, memory-mapped (nothing is read until a row is asked for)."""
        return datasets.Dataset.from_file(str(self.root / ARROW_FILE))

    def __len__(self) -> int:
        return int(self.info["rows"])


def decode_instance(row: dict, size: tuple[int, int]) -> np.ndarray | None:
    """The H x W int32 instance ids of a cached row, or None for a cache without instance maps."""
    if not row.get("instance"):
        return None
    return np.frombuffer(row["instance"], dtype=np.int32).reshape(size)


def decode_row(row: dict, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Raw bytes of a cached row -> (H x W x 3 image, H x W label) uint8 views."""
    height, width = size
    image = np.frombuffer(row["image"], dtype=np.uint8).reshape(height, width, 3)
    label = np.frombuffer(row["label"], dtype=np.uint8).reshape(height, width)
    return image, label


def mapping_key(table: ClassTable) -> str:
    """'' for tables whose files hold the ids; else a digest of the value -> id mapping, since
    the cached labels depend on it (names and colours do not)."""
    if table.lookup is None:
        return ""
    return f"-map{hashlib.sha256(table.lookup.astype(np.int16).tobytes()).hexdigest()[:8]}"


def cache_root_for(cfg: Any) -> Path:
    return Path(str(cfg.get("cache_dir") or "runs/data")).expanduser()


def _refusal(problems: list[tuple[int, str]], total: int, origin: str) -> DataError:
    listed = "\n".join(f"  row {i}: {reason}" for i, reason in problems[:MAX_LISTED_PROBLEMS])
    more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
    return DataError(
        f"{origin}: {len(problems)} of {total} rows are unusable, so the dataset is refused:\n"
        f"{listed}{more}\nFix the rows, or pass data.on_bad_row=skip to leave them out."
    )


def prepare_data(cfg: Any, *, show_progress: bool = True) -> PreparedData:
    """Validate, resize and cache the configured source; reuse the cache when it exists."""
    size = parse_size(cfg.size)
    resize = str(cfg.get("resize", "stretch"))
    policy = str(cfg.get("on_bad_row", "error"))
    if policy not in ("error", "skip"):
        raise DataError(f"data.on_bad_row must be 'error' or 'skip', got {policy!r}")
    table = class_table(cfg)
    # generated scenes are keyed by their settings alone: no need to draw them to find the cache
    rows = None if cfg.name == "scenes" else load_source(cfg)
    instances = rows is not None and "instance" in (rows.column_names or [])
    key = f"{source_key(cfg, rows)}-{size[0]}x{size[1]}-{resize}{mapping_key(table)}{'-inst' if instances else ''}"
    root = cache_root_for(cfg) / key
    for leftover in remove_leftovers(root.parent, "tmp", root.name) if root.parent.is_dir() else []:
        print(f"removed {leftover}: the unfinished cache of a killed preparation")
    if (root / INFO_FILE).exists():
        info = json.loads((root / INFO_FILE).read_text())
        if info["skipped"] and policy == "error":
            raise _refusal([(p["row"], p["reason"]) for p in info["problems"]], info["source_rows"], key)
        return PreparedData(root, info)

    check_output_folder(root.parent, "data.cache_dir")  # before the rows are read and resized
    if rows is None:
        rows = load_source(cfg)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(root, "tmp")
    tmp.mkdir()
    try:
        info = _write_cache(rows, tmp, cfg, key, size, resize, policy, table, show_progress)
        try:
            tmp.rename(root)
        except OSError:  # another process finished the same cache first: use theirs
            if not (root / INFO_FILE).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PreparedData(root, info)


def _write_cache(
    rows: datasets.Dataset | datasets.IterableDataset,
    out: Path,
    cfg: Any,
    key: str,
    size: tuple[int, int],
    resize: str,
    policy: str,
    table: ClassTable,
    show_progress: bool,
) -> dict[str, Any]:
    started = time.perf_counter()
    num_classes, names = table.num_classes, table.names
    pixel_counts = np.zeros(num_classes, dtype=np.int64)
    image_counts = np.zeros(num_classes, dtype=np.int64)
    converted: Counter[str] = Counter()
    source_sizes: Counter[str] = Counter()
    problems: list[tuple[int, str]] = []
    preview: list[tuple[np.ndarray, np.ndarray]] = []
    export = bool(cfg.get("export_png", False))
    if export:
        for folder in ("images", "labels", "colored_masks"):
            (out / folder).mkdir()
    total = len(rows) if isinstance(rows, datasets.Dataset) else None
    instances = "instance" in (rows.column_names or [])
    writer = ArrowWriter(features=INSTANCE_FEATURES if instances else FEATURES, path=str(out / ARROW_FILE),
                         writer_batch_size=16)
    seen = written = 0
    bar = tqdm(rows, total=total, desc=f"prepare {key}", unit="row", disable=not show_progress)
    for index, row in enumerate(bar):
        seen += 1
        try:
            clean = clean_row(row, table)
        except RowError as err:
            problems.append((index, str(err)))
            bar.set_postfix(bad=len(problems))
            continue
        if problems and policy == "error":
            continue  # the dataset is refused anyway: only keep counting bad rows
        if clean.converted_from:
            converted[clean.converted_from] += 1
        source_sizes[f"{clean.label.shape[1]}x{clean.label.shape[0]}"] += 1
        if instances and clean.instance is None:
            problems.append((index, "the row has no instance map, and the others do"))
            continue
        image, label, *instance = resize_pair(clean.image, clean.label, size, resize, clean.instance)
        counts = np.bincount(label.ravel(), minlength=num_classes)
        pixel_counts += counts
        image_counts += counts > 0
        record = {"index": index, "image": image.tobytes(), "label": label.tobytes()}
        writer.write({**record, "instance": instance[0].astype(np.int32).tobytes()} if instances else record)
        if export:
            name = f"{index:06d}.png"
            save_png(image, out / "images" / name)
            save_png(label, out / "labels" / name)
            save_png(table.colorize(label), out / "colored_masks" / name)
        if len(preview) < 16:
            preview.append((image, label))
        written += 1
    writer.finalize()
    writer.close()
    if seen == 0:
        raise DataError(f"{key}: the dataset is empty (0 rows); check data.path and data.split")
    if problems and policy == "error":
        raise _refusal(problems, seen, key)
    if written == 0:
        raise DataError(f"{key}: all {seen} rows are unusable; first: row {problems[0][0]}: {problems[0][1]}")
    frequencies = pixel_counts / max(pixel_counts.sum(), 1)
    info = {
        "key": key,
        "source": cfg.name,
        "path": str(cfg.get("path", "scenes")),
        "rows": written,
        "source_rows": seen,
        "skipped": len(problems),
        "problems": [{"row": i, "reason": r} for i, r in problems[:100]],
        "converted_to_rgb": dict(converted),
        "source_sizes": dict(source_sizes.most_common()),
        "size": list(size),
        "resize": resize,
        "num_classes": num_classes,
        "class_table": table.name,
        "instances": instances,
        "ignore": table.ignore,
        "class_names": list(names),
        "class_pixel_frequency": {names[i]: float(f) for i, f in enumerate(frequencies)},
        "images_per_class": {names[i]: int(c) for i, c in enumerate(image_counts)},
        "classes_present": int((image_counts > 0).sum()),
        "seconds": round(time.perf_counter() - started, 2),
    }
    save_png(pairs_grid([p[0] for p in preview], [p[1] for p in preview], table), out / "preview.png")
    save_png(class_frequency_chart(frequencies, image_counts.tolist(), table.names, table.palette),
             out / "class_frequency.png")
    (out / INFO_FILE).write_text(json.dumps(info, indent=2))
    if problems:
        print(f"skipped {len(problems)} of {seen} rows (data.on_bad_row=skip); see {INFO_FILE}")
    return info


def describe(prepared: PreparedData) -> str:
    """A short human summary of a prepared dataset: every class found, with its pixel share."""
    info = prepared.info
    found = sorted(((name, freq) for name, freq in info["class_pixel_frequency"].items()
                    if info["images_per_class"][name] > 0), key=lambda kv: -kv[1])
    shares = textwrap.wrap(", ".join(f"{name} {freq:.1%}" for name, freq in found), 96,
                           initial_indent="    ", subsequent_indent="    ")
    table = info.get("class_table", "sidewalk")
    lines = [
        f"prepared {info['rows']} rows at {info['size'][0]}x{info['size'][1]} ({info['resize']}) in {prepared.root}",
        f"  classes found: {info['classes_present']} of {info['num_classes']} (table {table}); "
        f"skipped rows: {info['skipped']}; converted to RGB: {info['converted_to_rgb'] or 'none'}",
        "  pixel shares:", *shares,
        f"  look at: {prepared.root / 'preview.png'} and {prepared.root / 'class_frequency.png'}",
    ]
    return "\n".join(lines)


def split_indices(num_rows: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) row indices from a seeded permutation: the same on every run and rank."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"data.val_fraction must lie in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(num_rows)
    num_val = int(round(num_rows * val_fraction))
    if val_fraction > 0:
        num_val = max(1, num_val)
    if num_rows - num_val < 1:
        raise DataError(f"{num_rows} rows leave nothing to train on with data.val_fraction={val_fraction}")
    return np.sort(order[num_val:]), np.sort(order[:num_val])
