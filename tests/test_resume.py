"""Resume after a crash: the run continues as if it had never stopped, with DataLoader workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST_TRAIN, REPO, compose_train
from test_training import scalar_curve

from sdm.checkpoints import load_checkpoint
from sdm.training import train

# 22 training rows in batches of 4: 5 steps per epoch; the last checkpoint before the kill, at
# step 6, is mid-epoch 1
RESUME = ["data.num_workers=2", "trainer.max_steps=10", "checkpoint.every_n_steps=3", "validation.every_n_steps=5"]


def cli(run_dir: Path, cache: Path, *extra: str, die: tuple[str, int] | None = None,
        dump_ema: bool = False) -> subprocess.CompletedProcess:
    """train.py in a fresh interpreter and its own process group, with the test hooks
    (tests/helpers/hooks/sitecustomize.py)."""
    args = [a for a in FAST_TRAIN if not a.startswith("experiment")]
    command = [sys.executable, "train.py", "experiment=quickstart", *args, *RESUME, f"run_dir={run_dir}",
               f"data.cache_dir={cache}", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDM_TEST_DIE": f"{die[0]}:{die[1]}" if die else "",
           "SDM_TEST_DUMP_EMA": "1" if dump_ema else "",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "helpers" / "hooks"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
                          start_new_session=True)


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


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run the interrupted ones must equal."""
    out = tmp_path_factory.mktemp("straight")
    train(compose_train(out / "run", *RESUME, cache_dir=out / "cache"))
    return out / "run"


@pytest.mark.slow  # two runs in fresh interpreters
def test_resume_after_sigkill_with_workers_is_exact(straight, tmp_path):
    resumed = tmp_path / "resumed"
    killed = cli(resumed, tmp_path / "cache", die=("SIGKILL", 8))  # step 7 and 8 are lost
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert load_checkpoint(resumed / "checkpoints" / "last.ckpt")["global_step"] == 6
    again = cli(resumed, tmp_path / "cache", "ckpt_path=last")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_run(straight, resumed)


@pytest.mark.slow  # two runs in fresh interpreters
@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR2"])  # SLURM's stop, and submitit's warning without submitit
def test_a_stop_signal_writes_a_checkpoint_and_a_resume_hint(straight, tmp_path, name):
    resumed = tmp_path / "resumed"
    stopped = cli(resumed, tmp_path / "cache", die=(name, 7))
    signum = getattr(signal, name)
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    # the signal comes after step 7 was checked, so the run writes step 8 (not a periodic step)
    assert f"stopped: {name} after step 8" in stopped.stderr
    assert f"run_dir={resumed} ckpt_path=last" in stopped.stderr and "Traceback" not in stopped.stderr
    assert load_checkpoint(resumed / "checkpoints" / "last.ckpt")["global_step"] == 8
    assert not (resumed / "export").exists()  # a stopped run is not a finished one
    again = cli(resumed, tmp_path / "cache", "ckpt_path=last")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_run(straight, resumed)
