"""Generation split over processes: each shard takes every n-th mask and writes its own record;
the last shard to finish merges the records into manifest.json and draws the grids.

Every image already has its own seed (sample k of mask i), and every shard keeps the pass size
of an unsharded run, so the union of the shards is, file for file, the unsharded run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdm.core.atomic import write_json
from sdm.core.errors import ConfigError
from sdm.data.classes import class_table
from sdm.generation.grids import write_grids
from sdm.generation.layout import MANIFEST, SHARDS_DIR, manifest_items
from sdm.generation.masks import Mask

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: object) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; null -> (0, 1), the whole run."""
    if spec is None or str(spec) == "":
        return 0, 1
    match = _SPEC.match(str(spec))
    index, count = (int(match.group(1)), int(match.group(2))) if match else (-1, 0)
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard={spec!r}: expected i/n with 0 <= i < n, for example shard=0/4 .. shard=3/4 "
                          "(SLURM arrays: shard=${oc.env:SLURM_ARRAY_TASK_ID}/${oc.env:SLURM_ARRAY_TASK_COUNT})")
    return index, count


def shard_masks(masks: Sequence[Mask], index: int, count: int) -> list[Mask]:
    """Every count-th mask from position index: shards of similar size whatever the masks' order."""
    return list(masks[index::count])


def shard_record_path(out_dir: Path, index: int, count: int) -> Path:
    return out_dir / SHARDS_DIR / f"shard-{index:04d}-of-{count:04d}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """A shard's record, or None while it is missing or unreadable (a shard still starting)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def merge_shards(out_dir: Path, masks: Sequence[Mask], count: int, base: dict[str, Any]) -> dict[str, Any] | None:
    """manifest.json and the grids once every shard of `count` is complete; None before."""
    records = [read_record(shard_record_path(out_dir, i, count)) for i in range(count)]
    waiting = [i for i, record in enumerate(records) if not (record and record.get("complete"))]
    if waiting:
        print(f"{count - len(waiting)} of {count} shards complete; the last one to finish writes "
              f"{MANIFEST} and the grids (waiting for shard {', '.join(f'{i}/{count}' for i in waiting[:8])})")
        return None
    per_mask, seed = int(base["num_per_mask"]), int(base["settings"]["seed"])
    grids = write_grids(out_dir, masks, per_mask, {m.name for m in masks}, class_table(base["train_data"]))
    manifest = {
        **base,
        "complete": True,
        "shards": count,
        "device": sorted({str(r["device"]) for r in records}),
        "images_made": sum(int(r["images_made"]) for r in records),
        "seconds": max(float(r["seconds"]) for r in records),
        "items": manifest_items(masks, per_mask, seed),
        "grids": grids,
    }
    write_json(out_dir / MANIFEST, manifest)
    return manifest
