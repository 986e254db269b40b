"""Resume after a crash: the run continues as if it had never stopped, with DataLoader workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST_TRAIN, REPO, compose_train
from test_training import scalar_curve

from sdm.checkpoint.files import load_checkpoint
from sdm.training.fit import train

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
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=600)
        finally:  # nothing of the run outlives the test (a spawned rank, a DataLoader worker)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


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
# SLURM's stop, and submitit's warning without submitit; the SIGTERM lands before step 5, a
# validation step (validation.every_n_steps=5), the SIGUSR2 before step 8, an ordinary one
@pytest.mark.parametrize(("name", "sent_after"), [("SIGTERM", 4), ("SIGUSR2", 7)])
def test_a_stop_signal_writes_a_checkpoint_and_a_resume_hint(straight, tmp_path, name, sent_after):
    resumed = tmp_path / "resumed"
    keep = "checkpoint.keep_periodic=-1"  # the quickstart keeps last.ckpt only: here every file counts
    stopped = cli(resumed, tmp_path / "cache", keep, die=(name, sent_after))
    signum, stop = getattr(signal, name), sent_after + 1
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    # the signal comes after its step was checked, so the run stops after the next one
    assert f"stopped: {name} after step {stop}" in stopped.stderr
    assert f"run_dir={resumed} ckpt_path=last" in stopped.stderr and "Traceback" not in stopped.stderr
    assert load_checkpoint(resumed / "checkpoints" / "last.ckpt")["global_step"] == stop
    # one write on a stop (last.ckpt), no validation first: seconds count before SIGKILL
    periodic = sorted(p.name for p in (resumed / "checkpoints").glob("step=*.ckpt"))
    assert periodic == [f"step={s:07d}.ckpt" for s in range(3, stop, 3)], periodic
    # validation runs after step 5 (logged at Lightning's step index 4): only if the stop came later
    validated = sorted(scalar_curve(straight, "val/loss"))
    assert validated[0] == 4
    assert sorted(scalar_curve(resumed, "val/loss")) == [s for s in validated if s + 1 < stop]
    assert not (resumed / "export").exists()  # a stopped run is not a finished one
    again = cli(resumed, tmp_path / "cache", keep, "ckpt_path=last")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_run(straight, resumed)
