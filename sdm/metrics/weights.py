"""Pretrained weights of the published metrics (Inception for FID/KID, AlexNet for LPIPS).

They come from torch's standard cache (`$TORCH_HOME/hub/checkpoints`, or the folder given
as `evaluation.weights_dir`). Compute nodes often have no internet: `python -m
sdm.metrics.weights download [--dir DIR]` fetches every file on a machine that has, and the
folder is then copied or shared. When a file is missing, the metric that needs it is skipped
with one line saying so and how to fix it; every other metric still runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sdm.core.errors import DataError
from sdm.core.exits import WRITE_ERRNOS
from sdm.core.places import check_output_folder


@dataclass(frozen=True)
class WeightFile:
    metric: str
    filename: str
    url: str


WEIGHT_FILES = {
    "inception": WeightFile(
        "FID/KID (Inception-v3, torch-fidelity's port of the TF FID network)",
        "weights-inception-2015-12-05-6726825d.pth",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    ),
    "alexnet": WeightFile(
        "LPIPS (AlexNet backbone, torchvision)",
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    ),
}


def checkpoint_dir(weights_dir: str | Path | None = None) -> Path:
    """Where torch.hub keeps downloaded weights: `<weights_dir>/checkpoints` or the default cache."""
    root = Path(weights_dir).expanduser() if weights_dir else Path(torch.hub.get_dir())
    return root / "checkpoints"


def use_weights_dir(weights_dir: str | Path | None) -> None:
    """Point torch.hub (and so torchvision, lpips and torch-fidelity) at `weights_dir`."""
    if weights_dir:
        torch.hub.set_dir(str(Path(weights_dir).expanduser()))


def weight_path(name: str, weights_dir: str | Path | None = None) -> Path:
    return checkpoint_dir(weights_dir) / WEIGHT_FILES[name].filename


def missing_message(name: str, weights_dir: str | Path | None = None) -> str | None:
    """None when the weights of `name` are on disk, else one line: what is skipped and the fix."""
    path = weight_path(name, weights_dir)
    if path.is_file():
        return None
    entry = WEIGHT_FILES[name]
    return (f"{entry.metric} skipped: {path} not found. On a machine with internet run "
            f"`python -m sdm.cli.weights download --dir <folder>`, then pass evaluation.weights_dir=<folder>")


def download(weights_dir: str | Path | None = None) -> list[Path]:
    """Fetch every metric weight file into the cache (skipping those already there)."""
    folder = checkpoint_dir(weights_dir)
    missing = [entry for entry in WEIGHT_FILES.values() if not (folder / entry.filename).is_file()]
    if missing:  # about 330 MB: the place is checked before the first byte comes
        check_output_folder(folder, "--dir" if weights_dir else "torch's hub folder", need_bytes=400 * 2**20)
        folder.mkdir(parents=True, exist_ok=True)
    for entry in missing:
        print(f"downloading {entry.url}")
        try:  # torch writes to a temporary name and renames it: a failure leaves no half file
            torch.hub.download_url_to_file(entry.url, str(folder / entry.filename), progress=True)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
                raise
            raise DataError(f"could not download {entry.url} to {folder}: {err}; on a machine without internet, "
                            "run `sdm-weights download --dir DIR` where there is, and copy DIR here") from None
    return [folder / entry.filename for entry in WEIGHT_FILES.values()]
