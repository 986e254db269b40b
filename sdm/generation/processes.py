"""`devices=N`: one generation in N local processes (one per GPU, or CPU processes), each a shard.

With shard=i/n as well (one job per node of a SLURM array), process j of node i runs shard
i * N + j of n * N, so nodes and their GPUs split the masks without overlap.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf

from sdm.checkpoint.files import resolve_weights_source
from sdm.core.children import end_with_parent
from sdm.core.errors import ConfigError, SDMError
from sdm.core.hardware import resolve_device
from sdm.core.places import check_output_folder
from sdm.generation.layout import MANIFEST, default_out_dir
from sdm.generation.run import generate_here
from sdm.generation.shards import parse_shard, read_record


def process_plan(cfg: DictConfig) -> list[dict[str, Any]]:
    """Per process: the overrides that make it one shard on its own device."""
    devices = int(cfg.devices)
    node, nodes = parse_shard(cfg.shard)
    device = resolve_device(str(cfg.device))
    if device.type == "cuda":
        available = torch.cuda.device_count()
        if devices > available:
            raise ConfigError(f"devices={devices}, but this machine has {available} GPU(s); "
                              f"use devices<={available} or device=cpu")
    return [{"shard": f"{node * devices + j}/{nodes * devices}", "devices": 1,
             "device": f"cuda:{j}" if device.type == "cuda" else str(device)} for j in range(devices)]


def _worker(j: int, cfg_yaml: str, plan: list[dict[str, Any]], threads: int, parent: int | None = None) -> None:
    if parent is not None and parent != os.getpid():  # a spawned child (tests run the body in-process)
        end_with_parent(parent)  # a parent killed with SIGKILL leaves no worker running on
    torch.set_num_threads(threads)
    try:
        generate_here(OmegaConf.merge(OmegaConf.create(cfg_yaml), plan[j]))
    except SDMError as err:
        print(f"error: process {j} ({plan[j]['shard']}): {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the terminal: the parent says it once
        sys.exit(130)


def run_in_processes(cfg: DictConfig) -> dict[str, Any]:
    """Start the processes, wait for all, and return the merged manifest."""
    plan = process_plan(cfg)
    if not cfg.out_dir:  # every process must write into one folder (a dated default would differ)
        cfg = OmegaConf.merge(cfg, {"out_dir": str(default_out_dir(cfg, resolve_weights_source(str(cfg.weights))))})
    check_output_folder(cfg.out_dir, "out_dir")  # once, before any process starts
    threads = max(1, (os.cpu_count() or 1) // len(plan))
    print(f"devices={len(plan)}: shards {plan[0]['shard']} .. {plan[-1]['shard']} -> {cfg.out_dir}")
    try:
        mp.start_processes(_worker, args=(OmegaConf.to_yaml(cfg), plan, threads, os.getpid()), nprocs=len(plan),
                           join=True, start_method="spawn")
    except mp.ProcessExitedException as err:
        if err.exit_code == 130:  # a worker stopped by Ctrl-C (torch has ended the others)
            raise KeyboardInterrupt from None
        raise SDMError(f"generation process {err.error_index} ({plan[err.error_index]['shard']}) failed with exit "
                       f"code {err.exit_code} (its message is above); re-run the same command to resume: "
                       "finished images are kept") from None
    except mp.ProcessRaisedException as err:
        raise SDMError(f"a generation process failed: {str(err).strip().splitlines()[-1]}; re-run the same "
                       "command to resume: finished images are kept") from None
    out_dir = Path(str(cfg.out_dir)).expanduser()
    manifest = read_record(out_dir / MANIFEST)
    if manifest is None or not manifest.get("complete"):  # other nodes' shards are still running
        return {"complete": False, "out_dir": str(out_dir)}
    return {**manifest, "out_dir": str(out_dir)}
