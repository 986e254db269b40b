"""Threads and processes of a test: one torch thread, the leftover a killed writer would leave."""

from __future__ import annotations

import os
from pathlib import Path


def one_torch_thread():
    """Body of a module's fixture: two OpenMP threads on two shared, busy cores spin-wait (up
    to 100x slower), so torch runs on one for the module's tests and is set back after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def leftover_path(path: Path, kind: str) -> Path:
    """The temporary name a writer on this host that has since been killed would have left."""
    import subprocess

    from sdm.core.atomic import temporary_name

    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid names no live process
    name = temporary_name(path, kind).name
    return path.with_name(name.replace(f"-{os.getpid()}-", f"-{child.pid}-"))
