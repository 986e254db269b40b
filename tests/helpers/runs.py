"""Training runs seen from outside: train.py in a child process, its TensorBoard curves, its checkpoints."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import REPO
from helpers.configs import FAST_TRAIN
from sdm.checkpoint.files import load_checkpoint


def scalar_curve(run_dir: Path, tag: str) -> dict[int, float]:
    """step -> value over all event files of a run dir (a resumed run adds a file)."""
    curve: dict[int, float] = {}
    for events in sorted((run_dir / "tb").glob("events.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            curve.update({e.step: e.value for e in acc.Scalars(tag)})
    return curve


# 22 training rows in batches of 4: 5 steps per epoch; the last checkpoint before the kill, at
# step 6, is mid-epoch 1
RESUME = ["data.num_workers=2", "trainer.max_steps=10", "checkpoint.every_n_steps=3", "validation.every_n_steps=5"]


def cli(run_dir: Path, cache: Path, *extra: str, die: tuple[str, int] | tuple[str, int, str] | None = None,
        dump_ema: bool = False) -> subprocess.CompletedProcess:
    """train.py in a fresh interpreter and its own process group, with the test hooks
    (tests/helpers/hooks/sitecustomize.py)."""
    args = [a for a in FAST_TRAIN if not a.startswith("experiment")]
    command = [sys.executable, "train.py", "experiment=quickstart", *args, *RESUME, f"run_dir={run_dir}",
               f"data.cache_dir={cache}", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDM_TEST_DIE": ":".join(map(str, die)) if die else "",
           "SDM_TEST_DUMP_EMA": "1" if dump_ema else "",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "helpers" / "hooks"), os.environ.get("PYTHONPATH", "")])}
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True, preexec_fn=ctrl_c_as_in_a_terminal) as process:
        try:
            stdout, stderr = process.communicate(timeout=600)
        finally:  # nothing of the run outlives the test (a spawned rank, a DataLoader worker)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def ctrl_c_as_in_a_terminal() -> None:
    """Children of a test run in the background inherit SIGINT ignored (and keep ignoring Ctrl-C,
    as Python does): train.py gets a terminal's default instead."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def assert_same_run(straight: Path, resumed: Path) -> None:
    a = load_checkpoint(straight / "checkpoints" / "last.ckpt")
    b = load_checkpoint(resumed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 10
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    curve_a, curve_b = scalar_curve(straight, "train/loss"), scalar_curve(resumed, "train/loss")
    assert sorted(curve_a) == sorted(curve_b) and len(curve_a) == 10
    for step, value in curve_a.items():
        assert curve_b[step] == pytest.approx(value, abs=1e-6), step
