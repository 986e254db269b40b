"""Shared helpers of the benchmark scripts: composing configs, timing, peak memory, tables."""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def compose(*overrides: str):
    """The training config with overrides, as `python train.py` composes it."""
    from sdm.core.configs import compose
    from sdm.training.fit import register_resolvers

    register_resolvers()
    cfg = compose("train", list(overrides))
    cfg.output_dir = "/tmp/sdm-bench"
    return cfg


def rate(fn: Callable[[], None], items: int, warmup: int = 2, min_seconds: float = 5.0,
         max_iters: int = 50) -> float:
    """Items per second of `fn`, after warm-up, over at least `min_seconds`."""
    for _ in range(warmup):
        fn()
    start, iters = time.perf_counter(), 0
    while iters < max_iters and (iters < 3 or time.perf_counter() - start < min_seconds):
        fn()
        iters += 1
    return items * iters / (time.perf_counter() - start)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def machine() -> str:
    from sdm.core.hardware import cpu_has_bf16

    flags = "native bf16 (AVX-512 BF16 / AMX)" if cpu_has_bf16() else "no native bf16 (AVX2)"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {flags}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f} at start")


def markdown_table(rows: list[dict]) -> str:
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(r[h]) for h in headers) + " |" for r in rows]
    return "\n".join(lines)
