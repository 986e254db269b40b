"""Shared fixtures: no network, no writes outside tmp_path, small configs."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# trained segmenters are cached per data key: tests must never find (or fill) the user's cache
os.environ["SDM_SEGMENTER_DIR"] = tempfile.mkdtemp(prefix="sdm-segmenters-")
atexit.register(shutil.rmtree, os.environ["SDM_SEGMENTER_DIR"], ignore_errors=True)  # one per session, not left behind

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def street_like(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A cheap structured (image, label) pair: horizontal bands of classes with gradients."""
    rng = np.random.default_rng(seed)
    label = np.zeros((height, width), dtype=np.uint8)
    bands = np.sort(rng.choice(np.arange(1, height), size=3, replace=False))
    classes = rng.choice(np.arange(1, 35), size=4, replace=False)
    for start, stop, cls in zip([0, *bands], [*bands, height], classes, strict=True):
        label[start:stop] = cls
    label[:, : width // 7] = classes[0]
    colour = (label.astype(np.int32) * 7) % 255
    gradient = np.linspace(0, 40, width, dtype=np.int32)[None, :]
    image = np.stack([colour, (colour + gradient) % 255, (255 - colour)], -1).astype(np.uint8)
    return image, label


def write_hub_parquet(root: Path, rows: list[dict]) -> Path:
    """A local folder in the exact Hub schema of segments/sidewalk-semantic."""
    import datasets

    features = datasets.Features({"pixel_values": datasets.Image(), "label": datasets.Image()})
    columns = {"pixel_values": [r["pixel_values"] for r in rows], "label": [r["label"] for r in rows]}
    (root / "data").mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_dict(columns, features=features)
    ds.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return root


def hub_row(image: np.ndarray, label: np.ndarray, image_mode: str | None = None) -> dict:
    return {
        "pixel_values": {"bytes": png_bytes(image, image_mode), "path": None},
        "label": {"bytes": png_bytes(label), "path": None},
    }


@pytest.fixture(autouse=True)
def signals_left_as_found():
    """A test that leaves a stop signal blocked or ignored in this process breaks every later test
    that starts train.py: children inherit both (a CI run's stop tests failed so). Named here."""
    import signal

    watched = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    before = {s: signal.getsignal(s) for s in watched}
    yield
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    changed = {s: signal.getsignal(s) for s in watched if signal.getsignal(s) != before[s]}
    assert not blocked & set(watched), f"the test left {sorted(signal.Signals(s).name for s in blocked)} blocked"
    assert not changed, f"the test left the handlers of {[signal.Signals(s).name for s in changed]} changed"


@pytest.fixture
def data_cfg(tmp_path):
    """Factory for a `data` config group with caches under tmp_path."""

    def make(name: str = "scenes", **overrides):
        base = OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml")
        base.cache_dir = str(tmp_path / "cache")
        if name == "sidewalk":
            base.hub_cache_dir = str(tmp_path / "hf")
        cfg = OmegaConf.create({"data": base})
        for key, value in overrides.items():
            OmegaConf.update(cfg, f"data.{key}", value, force_add=True)
        if name == "scenes" and "scenes.size" not in overrides:
            cfg.data.scenes.size = cfg.data.size
        return cfg.data

    return make


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


FAST_TRAIN = ["experiment=quickstart", "debug=fast"]  # conf/debug/fast.yaml


def compose_train(output_dir, *overrides: str, cache_dir=None):
    """The train config as `python train.py` would compose it, writing under output_dir."""
    from sdm.core.configs import compose
    from sdm.training.fit import register_resolvers

    register_resolvers()
    cfg = compose("train", [*FAST_TRAIN, *overrides])
    cfg.output_dir = str(output_dir)
    cfg.data.cache_dir = str(cache_dir or (Path(output_dir).parent / "data-cache"))
    return cfg
