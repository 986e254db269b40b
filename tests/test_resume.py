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


def cli(run_dir: Path, cache: Path, *extra: str, die: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    script = [str(REPO / "tests" / "helpers" / "train_then_die.py"), die[0], str(die[1])] if die else ["train.py"]
    args = [a for a in FAST_TRAIN if not a.startswith("experiment")]
    command = [sys.executable, *script, "experiment=quickstart", *args, *RESUME, f"run_dir={run_dir}",
               f"data.cache_dir={cache}", *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


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


@pytest.mark.slow  # three runs, two of them in fresh interpreters
def test_resume_after_sigkill_with_workers_is_exact(tmp_path):
    straight = tmp_path / "straight"
    train(compose_train(straight, *RESUME, cache_dir=tmp_path / "cache"))
    resumed = tmp_path / "resumed"
    killed = cli(resumed, tmp_path / "cache", die=("SIGKILL", 8))  # step 7 and 8 are lost
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert load_checkpoint(resumed / "checkpoints" / "last.ckpt")["global_step"] == 6
    again = cli(resumed, tmp_path / "cache", "ckpt_path=last")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_run(straight, resumed)
