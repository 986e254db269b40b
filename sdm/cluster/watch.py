"""Job states from `squeue` where `sacct` has none, so a submission never waits on a dead job.

submitit learns that a job ended from its result file or from `sacct`. On a cluster without
accounting (many small clusters, and the local one of `tools/local_slurm.py`) `sacct` answers
nothing; a task killed by srun's --kill-on-bad-exit writes no result file, so the submitting
`train.py -m` would wait for it forever. Here every job `sacct` says nothing of is looked up in
`squeue --states=all`, which keeps ended jobs for MinJobAge (300 s by default); a job that squeue
listed once and lists no more has left the cluster and counts as ended (one it never listed, e.g.
on another cluster of a federation, is waited for as before). Jobs `sacct` knows are left alone, and
on a cluster configured without accounting `sacct` is not called at all.
"""

from __future__ import annotations

import functools
import re
import subprocess
import time
from collections.abc import Iterable
from typing import Any

# squeue's states after which a job never runs again; submitit's own names for states of a job
# that may still run pass through, and any other (SUSPENDED, REQUEUE_HOLD, ...) reads RUNNING
ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT"}
WAITING = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "PREEMPTED"}
GONE = "ENDED (known to neither sacct nor squeue any more)"


def queue_states(job_ids: Iterable[str]) -> dict[str, str]:
    """job id (as submitit names it: 12 or 12_3) -> state, for the jobs asked about. Ended jobs
    and waiting ones keep squeue's state, others read RUNNING (submitit waits on them), absent ones GONE.
    Empty when squeue cannot answer (no command, controller down): nothing is concluded then."""
    wanted = sorted(set(job_ids))
    if not wanted:
        return {}
    mains = sorted({job.split("_")[0] for job in wanted})
    try:
        done = subprocess.run(["squeue", "-h", "-r", "--states=all", "-o", "%i|%T", "-j", ",".join(mains)],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    if done.returncode != 0 and "Invalid job id" not in done.stderr:
        return {}
    listed = {}
    for line in done.stdout.split():
        job, _, state = line.partition("|")
        listed[job] = state.split()[0] if state else "UNKNOWN"
    states = {}
    for job in wanted:
        state = listed.get(job)
        if state is None:
            states[job] = GONE
        else:
            states[job] = state if state in ENDED | WAITING else "RUNNING"
    return states


@functools.cache
def accounting_off() -> bool:
    """Whether the cluster keeps no accounting (sacct would only print an error, at every poll)."""
    try:
        done = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    found = re.search(r"^AccountingStorageType\s*=\s*(\S*)\s*$", done.stdout, re.M)
    return found is not None and found.group(1) in ("accounting_storage/none", "(null)", "")


def install_queue_fallback() -> None:
    """Make submitit's SLURM watcher ask squeue about the jobs sacct says nothing of."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    if getattr(SlurmInfoWatcher.update, "__name__", "") == "update_with_queue":
        return
    original = SlurmInfoWatcher.update

    def update_with_queue(self: Any) -> None:
        if accounting_off():
            self._last_status_check = time.time()  # what submitit's update notes, for its polling pace
        else:
            original(self)
        unknown = [job for job in self._registered - self._finished
                   if not self._info_dict.get(job) or self._info_dict[job].get("Source") == "squeue"]
        seen = self.__dict__.setdefault("_seen_in_queue", set())
        for job, state in queue_states(unknown).items():
            if state == GONE and job not in seen:
                continue  # never listed: not visible yet, or on another cluster (sbatch -M): keep waiting
            seen.add(job)
            self._info_dict[job] = {"JobID": job, "State": state, "Source": "squeue"}
            if self.is_done(job, mode="cache"):
                self._finished.add(job)

    update_with_queue.__wrapped__ = original  # type: ignore[attr-defined]  # (tests start from submitit's own)
    SlurmInfoWatcher.update = update_with_queue
