"""What the command tests run on: an exported tiny model, masks, a finished sample folder, an
official checkpoint (made once per module, in-process, without training)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers.configs import compose_train
from helpers.generation import SIZE, masks_of, sample_cfg
from helpers.official import Official
from omegaconf import OmegaConf

from sdm.checkpoint.files import EXPORT_DIR, export_ema
from sdm.generation import generate
from sdm.training.module import SDMModule


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    """What the commands read: an exported tiny model, masks, a finished sample folder, an
    official checkpoint."""
    root = tmp_path_factory.mktemp("places")
    run = root / "run"
    cfg = OmegaConf.to_container(compose_train(run, f"data.size=[{SIZE},{SIZE}]", "data.scenes.num=8"), resolve=True)
    module = SDMModule(cfg)
    export_ema(module.ema.module.state_dict(), cfg, run / EXPORT_DIR)
    masks = masks_of(root, 2)
    generate(sample_cfg(f"weights={run}", f"masks={masks}", f"out_dir={root / 'samples'}", "num_per_mask=1"))
    torch.save(Official(label_channels=10).state, root / "official.pt")
    return SimpleNamespace(root=root, run=run, masks=masks, samples=root / "samples", official=root / "official.pt")
