"""Fixtures of the generation tests: one torch thread, an exported tiny model, one unsharded reference run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.configs import compose_train
from helpers.generation import SIZE, masks_of, sample_cfg
from helpers.processes import one_torch_thread
from omegaconf import OmegaConf

from sdm.checkpoint.files import EXPORT_DIR, export_ema
from sdm.generation import generate
from sdm.training.module import SDMModule


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run dir with an export of an untrained tiny model, its weights nudged off their init
    (the zero-initialised output head would ignore the mask)."""
    run = tmp_path_factory.mktemp("gen") / "run"
    cfg = compose_train(run, f"data.size=[{SIZE},{SIZE}]", "data.scenes.num=12", "data.val_fraction=0.34")
    plain = OmegaConf.to_container(cfg, resolve=True)
    module = SDMModule(plain)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.ema.module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    export_ema(module.ema.module.state_dict(), plain, run / EXPORT_DIR)
    return run


@pytest.fixture(scope="module")
def single(run_dir, tmp_path_factory):
    """One unsharded run over 5 masks: the reference every sharded run must reproduce."""
    root = tmp_path_factory.mktemp("single")
    masks = masks_of(root, 5)
    manifest = generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={root / 'out'}"))
    return masks, root / "out", manifest
