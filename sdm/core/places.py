"""Output places, checked before a command's work: a folder (or room for one), writable, with
room left. Every command asks here, so that a bad `out_dir=` costs one line and no work.

Nothing is created: a refused start leaves nothing behind, and a good place is made by the
first atomic write into it (sdm.core.atomic).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sdm.core.atomic import WriteError

MIN_FREE_BYTES = 16 * 2**20  # below this no run of the project finishes (a manifest, a grid, a checkpoint)


def nearest_existing(path: Path) -> Path:
    """`path` itself or the closest of its parents that exists."""
    return next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor))


def check_output_folder(folder: str | Path, setting: str, need_bytes: int = MIN_FREE_BYTES) -> Path:
    """`folder` (user-expanded, absolute) if a command can write its outputs there; a WriteError
    naming `setting` (the key the user wrote, e.g. `out_dir`) and the folder otherwise."""
    folder = Path(folder).expanduser().absolute()
    existing = nearest_existing(folder)
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"cannot be made: {existing} is a file"
        raise WriteError(f"{setting}={folder} {where}, not a folder; choose a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"{setting}={folder} is not writable (read-only or no permission at {existing}); "
                         "choose a folder you can write")
    free = shutil.disk_usage(existing).free
    if free < need_bytes:
        raise WriteError(f"{setting}={folder}: the disk holding it has {free / 2**20:.1f} MiB free, less than the "
                         f"{need_bytes / 2**20:.0f} MiB this needs; free space or choose another folder")
    return folder


class RunDirCheck(Callback):
    """Hydra creates a run's folder (and writes .hydra/ there) before the command's own code runs:
    this checks that folder first, so `run_dir=<a file or a read-only place>` is one line."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "run_dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, setting: str) -> None:
        try:
            check_output_folder(folder, setting)
        except WriteError as err:  # Hydra would print an exception raised here with its traceback hint
            print(f"error: {err}", file=sys.stderr)
            sys.exit(err.exit_code)
