"""Submission to a real SLURM cluster (the local one of tools/local_slurm.py, brought up by .ci/run):
a sweep, misconfiguration refused before queueing, preemption and the time-limit signal
resumed in place, sharded generation. Skipped without a cluster unless SDM_REQUIRE_SLURM=1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO
from helpers.configs import FAST_TRAIN
from helpers.runs import scalar_curve

from sdm.checkpoint.files import load_checkpoint

PARTITION = "local"  # the partition tools/local_slurm.py sets up

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def cluster() -> None:
    state = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%a"], capture_output=True, text=True) \
        if subprocess.run(["which", "sinfo"], capture_output=True).returncode == 0 else None
    if state is None or state.returncode != 0 or "up" not in state.stdout:
        if os.environ.get("SDM_REQUIRE_SLURM"):
            pytest.fail("no local SLURM cluster: `python3 tools/local_slurm.py up` (as root) brings one up")
        pytest.skip("no local SLURM cluster (python3 tools/local_slurm.py up)")


def submit(tmp_path: Path, *overrides: str, script: str = "train.py") -> list[str]:
    base = [a for a in FAST_TRAIN if not a.startswith("experiment")] if script == "train.py" else []
    cpu = ["experiment=quickstart", "trainer.accelerator=cpu", "trainer.devices=1"] if script == "train.py" else []
    return [sys.executable, script, "-m", *cpu, *base, "hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}",
            "hydra.launcher.mem_gb=2", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10",
            f"output_root={tmp_path}", *overrides]


def run(command: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def known_jobs() -> set[str]:
    """Every job the controller knows, ended ones included (kept for MinJobAge), so that a job
    submitted and already gone still shows, while jobs of earlier tests may leave meanwhile."""
    listed = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(listed.stdout.split())


def sweep_of(tmp_path: Path) -> Path:
    sweeps = sorted((tmp_path / "multirun" / "quickstart").glob("*"))
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


def test_a_two_job_sweep_then_sharded_generation_run_on_the_cluster(cluster, tmp_path):
    done = run(submit(tmp_path, "guidance.drop_prob=0.1,0.2", f"data.cache_dir={tmp_path / 'cache'}"))
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = sweep_of(tmp_path)
    for job in ("0", "1"):
        assert (sweep / job / "export" / "ema.safetensors").is_file()
        assert list((sweep / job / "tb").glob("events.*"))  # tensorboard --logdir <sweep> shows both
    logs = sorted(sweep.glob(".submitit/*_*/*_log.out"))  # where the README says the job output is
    assert len(logs) == 2 and all("finished:" in p.read_text() for p in logs)
    drops = {load_checkpoint(sweep / j / "checkpoints" / "last.ckpt")["hyper_parameters"]["cfg"]["guidance"]["drop_prob"]
             for j in ("0", "1")}
    assert drops == {0.1, 0.2}
    # sharded generation through the same launcher: one job per shard, the last one completes it
    out = tmp_path / "samples"
    done = run(submit(tmp_path, f"weights={sweep / '0'}", "masks=all", "limit=3", "num_per_mask=2", "sampler.num_steps=2",
                      f"out_dir={out}", "shard=0/2,1/2", "device=cpu", script="sample.py"))
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["shards"] == 2 and len(list((out / "images").glob("*.png"))) == 6


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["hydra.launcher.tasks_per_node=2"], "tasks_per_node=2 but trainer.devices=1"),
     (["hydra.launcher.nodes=2"], "nodes=2 but trainer.num_nodes=1"),
     (["hydra.launcher.partition=nope"], "partition 'nope' does not exist on this cluster; it has local"),
     (["trainer.accelerator=gpu"], "gpus_per_node=1 but the nodes of partition 'local' have no GPUs")],
)
def test_misconfiguration_fails_before_anything_is_queued(cluster, tmp_path, overrides, message):
    before = known_jobs()
    done = run(submit(tmp_path, *overrides), timeout=120)
    assert done.returncode == 2 and "error: nothing was submitted" in done.stderr and message in done.stderr, \
        done.stderr[-2000:]
    assert not known_jobs() - before and not list(tmp_path.glob("multirun/*/*"))  # no sweep dir left either


def test_ddp_over_two_tasks_trains_as_one_run(cluster, tmp_path):
    """`trainer.devices=2`: two srun tasks that Lightning joins into one DDP run. A write failure
    on rank 0 must end the job at once (srun's kill-on-bad-exit): without it rank 1 waits at the
    checkpoint barrier until the collective times out (30 minutes), holding the allocation."""
    ddp = ["strategy=ddp", "trainer.devices=2", "data.batch_size=2", f"data.cache_dir={tmp_path / 'cache'}"]
    done = run(submit(tmp_path / "ok", *ddp, "guidance.drop_prob=0.2"))
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = sweep_of(tmp_path / "ok")
    assert load_checkpoint(sweep / "0" / "checkpoints" / "last.ckpt")["global_step"] == 8
    writers = {re.search(r"\.(\d+)\.\d+$", p.name).group(1) for p in (sweep / "0" / "tb").glob("events.*")}
    assert len(writers) == 1, writers  # rank 0 alone writes TensorBoard (its pid is in the file names)


def test_a_failing_rank_ends_the_whole_job_and_the_submission_reports_it(cluster, tmp_path):
    ddp = ["strategy=ddp", "trainer.devices=2", "data.batch_size=2", f"data.cache_dir={tmp_path / 'cache'}"]
    hooks = os.pathsep.join([str(REPO / "tests" / "helpers" / "hooks"), os.environ.get("PYTHONPATH", "")])
    started = time.time()
    failed = subprocess.run(submit(tmp_path / "full", *ddp, "guidance.drop_prob=0.2"), cwd=REPO, capture_output=True,
                            text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": hooks,
                                                         "SDM_TEST_FAIL_WRITE": "4"})
    took = time.time() - started
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "error: a SLURM job did not complete" in failed.stderr and "Traceback" not in failed.stderr.split(
        "the end of its report")[0]
    sweep = sweep_of(tmp_path / "full")
    log = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.err"))
    assert re.search(r"the disk holding \S+/checkpoints is full", log), log[-3000:]
    # ended by srun, not by the 30-minute collective timeout: the run's 400 s limit above would fail first
    print(f"a failed rank-0 write ended the 2-task job; the submission returned after {took:.0f} s")


def release_requeued(job_ids: list[str]) -> None:
    """A requeued job waits two minutes (its begin time) on this cluster: start it now."""
    for job in job_ids:
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        if "Reason=BeginTime" in shown:
            subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)


def test_preemption_and_the_time_limit_signal_resume_in_place_and_lose_no_step(cluster, tmp_path):
    """Job 0 is requeued by `scontrol requeue` (SIGTERM, as a preemption); job 1 gets SIGUSR2, what
    SLURM sends `signal_delay_s` before the time limit, and submitit requeues it."""
    steps = 120
    command = submit(tmp_path, "guidance.drop_prob=0.1,0.2", f"trainer.max_steps={steps}",
                     "checkpoint.every_n_steps=20", "checkpoint.keep_periodic=-1", "ckpt_path=auto",
                     "data.num_workers=2", "validation.every_n_steps=60", f"data.cache_dir={tmp_path / 'cache'}")
    launcher = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and len(list(tmp_path.glob("multirun/quickstart/*/[01]/checkpoints/step=0000040.ckpt"))) < 2:
        time.sleep(0.5)
    sweep = sweep_of(tmp_path)
    array = next(p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit())
    jobs = [f"{array}_0", f"{array}_1"]
    subprocess.run(["scontrol", "requeue", jobs[0]], check=True)
    subprocess.run(["scancel", "--signal=USR2", jobs[1]], check=True)
    while launcher.poll() is None and time.time() < deadline + 300:
        release_requeued(jobs)
        time.sleep(1)
    out, err = launcher.communicate(timeout=10)
    assert launcher.returncode == 0, err[-3000:]
    for job, signal_name in (("0", "SIGTERM"), ("1", "SIGUSR2")):
        run_dir = sweep / job
        assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == steps
        log = "".join(p.read_text() for p in sweep.glob(f".submitit/{array}_{job}/*_log.err"))
        stopped = re.search(rf"stopped: {signal_name} after step (\d+)", log)
        assert stopped, log[-3000:]
        # one TensorBoard run continued: every step logged once, the second process from the stop on
        curve = scalar_curve(run_dir, "train/loss")
        assert sorted(curve) == list(range(steps))
        done_before, first_after = int(stopped.group(1)), min(steps_of_last_process(run_dir))
        assert first_after == done_before, (done_before, first_after)  # nothing redone, nothing skipped
        print(f"job {job}: {signal_name} after step {done_before} of {steps}; resumed at step {first_after}")


def steps_of_last_process(run_dir: Path) -> set[int]:
    """The train/loss steps written by the process that wrote the newest event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run_dir / "tb").glob("events.*"), key=lambda p: p.stat().st_mtime)
    pid = files[-1].name.split(".")[-2]
    steps: set[int] = set()
    for events in files:
        if events.name.split(".")[-2] == pid:
            acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
            acc.Reload()
            if "train/loss" in acc.Tags()["scalars"]:
                steps |= {e.step for e in acc.Scalars("train/loss")}
    return steps
