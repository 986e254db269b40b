"""Resume after a crash: the run continues as if it had never stopped, with DataLoader workers."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from helpers.configs import compose_train
from helpers.runs import RESUME, assert_same_run, cli, scalar_curve

from sdm.checkpoint.files import load_checkpoint
from sdm.training.fit import train


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
# SLURM's stop, submitit's warning without submitit, and Ctrl-C (to the whole process group, DataLoader
# workers included, as a terminal sends it); the SIGTERM lands before step 5, a validation step
# (validation.every_n_steps=5), the SIGUSR2 and SIGINT before step 8 and 7, ordinary ones
@pytest.mark.parametrize(("name", "sent_after"), [("SIGTERM", 4), ("SIGUSR2", 7), ("SIGINT", 6)])
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
