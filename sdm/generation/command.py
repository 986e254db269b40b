"""What `sample.py` runs: the whole generation in this process, or spread over `devices` local processes."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from sdm.generation.processes import run_in_processes
from sdm.generation.run import generate_here
from sdm.generation.settings import check_settings


def generate(cfg: DictConfig) -> dict[str, Any]:
    """Run a whole generation as configured (one shard of it with shard=i/n, or all of it in
    `devices` local processes); returns the manifest, or {"complete": False, ...} for a shard
    that finished while others still run."""
    check_settings(cfg)
    if int(cfg.devices) > 1:
        return run_in_processes(cfg)
    return generate_here(cfg)
