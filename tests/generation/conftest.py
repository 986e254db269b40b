"""Fixtures of the generation tests: one torch thread, an exported tiny model, one unsharded reference run."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.generation import masks_of, nudged_export, sample_cfg
from helpers.processes import one_torch_thread

from sdm.generation import generate


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run dir with an export of an untrained tiny model, its weights nudged off their init."""
    return nudged_export(tmp_path_factory.mktemp("gen") / "run")


@pytest.fixture(scope="module")
def single(run_dir, tmp_path_factory):
    """One unsharded run over 5 masks: the reference every sharded run must reproduce."""
    root = tmp_path_factory.mktemp("single")
    masks = masks_of(root, 5)
    manifest = generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={root / 'out'}"))
    return masks, root / "out", manifest
