"""Shared fixtures: no network, no writes outside tmp_path, small configs."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# trained segmenters are cached per data key: tests must never find (or fill) the user's cache
os.environ["SDM_SEGMENTER_DIR"] = tempfile.mkdtemp(prefix="sdm-segmenters-")
atexit.register(shutil.rmtree, os.environ["SDM_SEGMENTER_DIR"], ignore_errors=True)  # one per session, not left behind

import pytest  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from sdm.core.configs import compose  # noqa: E402


@pytest.fixture(autouse=True)
def class_tables_built_anew():
    """Every test builds its class tables from their configs: a table cached by an earlier test, or by
    the mutation tool's parent process before it forks, would hide how the configs are read."""
    from sdm.data import classes

    classes._table_of.cache_clear()
    classes._ids_form.cache_clear()


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
        composed = compose("prepare", [f"data={name}"]).data  # with its class table
        base = OmegaConf.create(OmegaConf.to_container(composed, resolve=False))
        base.cache_dir = str(tmp_path / "cache")
        if name in ("sidewalk", "hub"):
            base.hub_cache_dir = str(tmp_path / "hf")
        cfg = OmegaConf.create({"data": base})
        for key, value in overrides.items():
            OmegaConf.update(cfg, f"data.{key}", value, force_add=True)
        if name == "scenes" and "scenes.size" not in overrides:
            cfg.data.scenes.size = cfg.data.size
        return cfg.data

    return make


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, size, read_only) -> a folder on its own small tmpfs (needs root, as in CI)."""
    from helpers.places import mount_tmpfs, unmount_all

    yield lambda name, size="256k", read_only=False: mount_tmpfs(tmp_path / name, size, read_only)
    unmount_all(tmp_path)
