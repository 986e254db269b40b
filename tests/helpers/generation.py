"""Generation helpers: the sample config of the tests, mask folders, pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sdm.core.configs import compose
from sdm.data.classes import colorize

SIZE = 16
FAST = ["sampler=ddim", "sampler.num_steps=2", "precision=fp32", "device=cpu", "batch_size=4", "num_per_mask=2"]


def sample_cfg(*overrides: str):
    return compose("sample", [*FAST, *overrides])


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def mask_folder(root: Path, labels: dict[str, np.ndarray], coloured: bool = True) -> Path:
    folder = root / "labels"
    folder.mkdir(parents=True)
    for name, label in labels.items():
        Image.fromarray(colorize(label) if coloured else label).save(folder / f"{name}.png")
    return folder


def bands(height: int, width: int, classes: tuple[int, ...]) -> np.ndarray:
    label = np.zeros((height, width), np.uint8)
    for i, cls in enumerate(classes):
        label[i * height // len(classes) :] = cls
    return label


TIMING = ("seconds", "images_made", "device", "shards")  # what may differ between a sharded run and one run


def files(folder: Path) -> dict[str, bytes]:
    """Every file of a generation but the records, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix == ".png"}


def masks_of(tmp_path: Path, num: int) -> Path:
    return mask_folder(tmp_path / "masks", {f"m{i}": bands(SIZE, SIZE, (1 + i, 8 + i % 3)) for i in range(num)})


def stable(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in (*TIMING, "out_dir")}


def nudged_export(run: Path, *overrides: str) -> Path:
    """A run dir with an export of an untrained tiny model at SIZE, its weights nudged off their init
    (the zero-initialised output head would ignore the mask)."""
    import torch
    from omegaconf import OmegaConf

    from helpers.configs import compose_train
    from sdm.checkpoint.files import EXPORT_DIR, export_ema
    from sdm.training.module import SDMModule

    cfg = compose_train(run, f"data.size=[{SIZE},{SIZE}]", "data.scenes.num=12", "data.val_fraction=0.34", *overrides)
    plain = OmegaConf.to_container(cfg, resolve=True)
    module = SDMModule(plain)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.ema.module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    export_ema(module.ema.module.state_dict(), plain, run / EXPORT_DIR)
    return run
