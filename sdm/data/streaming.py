"""Training straight from a streamed Hub dataset: no download, no preparation cache.

Rows are validated, resized and augmented on the fly. Under DDP each rank reads its own part
(`split_dataset_by_node`); the train/val split is decided by a hash of the label bytes, so it
is the same on every rank and every run without knowing the row count. The training stream
repeats forever (one reshuffled pass per epoch), so ranks never run out at different times;
`trainer.max_steps` ends the run. Resume restarts the stream (exact resume needs the cache).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from sdm.core.errors import DataError
from sdm.data.classes import class_table
from sdm.data.rows import RowError, clean_row, parse_size, resize_pair
from sdm.data.sources import load_source
from sdm.data.transforms import A, to_item


def in_validation(row: dict, val_fraction: float, seed: int) -> bool:
    """A rank-independent split: the row's label bytes decide, not its position."""
    label = row["label"]
    payload = label.get("bytes") or str(label.get("path")).encode()
    digest = hashlib.blake2b(payload, digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def buffered_shuffle(rows: Iterable[dict], buffer_size: int, rng: np.random.Generator) -> Iterator[dict]:
    """Approximate shuffle of a stream through a fixed-size buffer (datasets' own shuffle
    stalls for seconds per pass in datasets 5.x)."""
    buffer: list[dict] = []
    for row in rows:
        if len(buffer) < buffer_size:
            buffer.append(row)
            continue
        slot = int(rng.integers(buffer_size))
        yield buffer[slot]
        buffer[slot] = row
    rng.shuffle(buffer)
    yield from buffer


class StreamingPairs(torch.utils.data.IterableDataset):
    """Batch items from a streamed source, for one split and one rank."""

    def __init__(self, cfg: Any, split: str, rank: int, world_size: int, transform: A.Compose | None,
                 repeat: bool | None = None) -> None:
        self.cfg, self.split, self.rank, self.world_size = cfg, split, rank, world_size
        self.repeat = split == "train" if repeat is None else repeat
        self.transform = transform
        self.size = parse_size(cfg.size)
        self._source = None

    def _rows(self, epoch: int) -> Iterator[dict]:
        if self._source is None:  # resolving a streamed dataset costs seconds: once per process
            self._source = load_source(self.cfg)
        rows = split_dataset_by_node(self._source, rank=self.rank, world_size=self.world_size)
        if self.split != "train":
            return iter(rows)
        rng = np.random.default_rng([int(self.cfg.split_seed), epoch, self.rank])
        return buffered_shuffle(rows, int(self.cfg.get("shuffle_buffer", 64)), rng)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        val_fraction, seed = float(self.cfg.val_fraction), int(self.cfg.split_seed)
        skip_bad = self.cfg.get("on_bad_row", "error") == "skip"
        epoch = 0
        while True:
            produced = 0
            for position, row in enumerate(self._rows(epoch)):
                if in_validation(row, val_fraction, seed) != (self.split == "val"):
                    continue
                try:
                    clean = clean_row(row, class_table(self.cfg))
                except RowError as err:
                    if not skip_bad:
                        raise DataError(f"streamed row {position} (rank {self.rank}): {err}") from None
                    warnings.warn(f"skipping streamed row {position}: {err}", stacklevel=2)
                    continue
                image, label = resize_pair(clean.image, clean.label, self.size, self.cfg.resize)
                if self.transform is not None:
                    self.transform.set_random_seed(seed * 1_000_003 + epoch * 7_919 + position)
                    out = self.transform(image=image, mask=label)
                    image, label = out["image"], out["mask"]
                produced += 1
                yield to_item(image, label)
            if not self.repeat:
                return
            if produced == 0:
                raise DataError(f"the streamed {self.split} split of rank {self.rank} is empty")
            epoch += 1
