"""A real one-machine SLURM cluster, to try submissions before spending cluster hours:

    python3 tools/local_slurm.py up       # install slurm-wlm + munge if missing, configure, start
    python3 tools/local_slurm.py status   # sinfo and squeue
    python3 tools/local_slurm.py down     # stop the daemons (jobs are cancelled)

Developer and CI tooling (`.ci/run` brings the cluster up for tests/test_slurm.py), not part of
the package: it installs system packages and writes /etc/slurm. Standard library only, so it runs
before any environment exists.

It needs root (or passwordless sudo), as CI has. The node is this host with its CPUs and
memory, in one partition `local`, without GPUs: jobs train on the CPU
(`trainer.accelerator=cpu`). The configuration follows shared/FACTS.md: linuxproc process
tracking, no task plugin, cons_tres selection of CPUs and memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by sdm.slurm: a local test cluster"  # the name it was written under first: kept to recognise it
STATE = Path("/var/lib/sdm-slurm")
PARTITION = "local"
PACKAGES = ("slurm-wlm", "munge")


class ClusterError(RuntimeError):
    """The local cluster cannot be set up or started; the message says why."""


def _as_root(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return command
    if shutil.which("sudo") is None:
        raise ClusterError(f"'{' '.join(command)}' needs root: run as root or install sudo")
    return ["sudo", "-n", *command]


def _run(command: list[str], check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(_as_root(command), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise ClusterError(f"'{' '.join(command)}' failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return done


def install() -> None:
    """Debian's slurm-wlm and munge, when their daemons are missing."""
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    if shutil.which("apt-get") is None:
        raise ClusterError("slurm-wlm and munge are missing and there is no apt-get: install SLURM and munge yourself")
    print("installing slurm-wlm and munge (apt-get) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(_as_root(command), capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise ClusterError(f"'{' '.join(command)}' failed: {done.stderr.strip()[-2000:]}")


def node_resources() -> tuple[int, int]:
    """(CPUs, memory in MB) this host offers to jobs: all CPUs, memory less 1 GB for the system."""
    total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal"))
    return os.cpu_count() or 1, max(512, total_kb // 1024 - 1024)


def slurm_conf(host: str, cpus: int, memory_mb: int) -> str:
    """The whole slurm.conf of a one-node cluster."""
    return f"""{MARKER}; `python3 tools/local_slurm.py down` stops it
ClusterName=sdm-local
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation={STATE}/ctld
SlurmdSpoolDir={STATE}/d
SlurmctldPidFile={STATE}/slurmctld.pid
SlurmdPidFile={STATE}/slurmd.pid
SlurmctldLogFile={STATE}/slurmctld.log
SlurmdLogFile={STATE}/slurmd.log
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def write_conf() -> str:
    host = socket.gethostname().split(".")[0]
    if CONF.exists() and MARKER not in CONF.read_text():
        raise ClusterError(f"{CONF} exists and was not written by sdm.slurm: this machine has a SLURM "
                           "configuration of its own; leaving it alone")
    text = slurm_conf(host, *node_resources())
    for folder in (STATE / "ctld", STATE / "d"):
        _run(["mkdir", "-p", str(folder)])
    tmp = Path(f"/tmp/sdm-slurm-{os.getpid()}.conf")
    tmp.write_text(text)
    _run(["install", "-m", "644", str(tmp), str(CONF)])
    tmp.unlink()
    return host


def _running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


def up(timeout_s: float = 60) -> None:
    """Install when needed, configure, start munged, slurmctld and slurmd; wait for the node."""
    install()
    host = write_conf()
    if not Path("/etc/munge/munge.key").exists():
        _run(["mungekey", "--create"])
        _run(["chown", "munge:munge", "/etc/munge/munge.key"])
    if not _running("munged"):
        _run(["mkdir", "-p", "/run/munge"])
        _run(["chown", "munge:munge", "/run/munge"])
        _run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"])
    if not _running("slurmctld"):
        _run(["slurmctld"])
    if not _running("slurmd"):
        _run(["slurmd"])
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        state = subprocess.run(["sinfo", "-h", "-n", host, "-o", "%t"], capture_output=True, text=True).stdout.strip()
        if state in ("idle", "mix", "alloc"):
            print(f"local SLURM cluster up: node {host}, partition '{PARTITION}' ({node_resources()[0]} CPUs, "
                  f"{node_resources()[1]} MB); logs in {STATE}")
            return
        if state in ("drain", "down", "drain*", "down*"):
            _run(["scontrol", "update", f"nodename={host}", "state=resume"], check=False)
        time.sleep(1)
    raise ClusterError(f"the node did not come up within {timeout_s:.0f} s (sinfo state {state!r}); see "
                       f"{STATE}/slurmctld.log and {STATE}/slurmd.log")


def down() -> None:
    """Cancel every job, stop the daemons (slurmd, slurmctld, munged) of the local cluster only."""
    if CONF.exists() and MARKER not in CONF.read_text():
        raise ClusterError(f"{CONF} was not written by sdm.slurm: this is a real cluster's node; leaving it running")
    if shutil.which("scancel") and _running("slurmctld"):
        _run(["scancel", "--full", "--user", str(os.getuid())], check=False)
    for name in ("slurmd", "slurmctld", "munged"):
        if _running(name):
            _run(["pkill", "-x", name], check=False)
    deadline = time.time() + 20
    while any(_running(n) for n in ("slurmd", "slurmctld")) and time.time() < deadline:
        time.sleep(0.5)
    print("local SLURM cluster down")


def status() -> None:
    for command in (["sinfo"], ["squeue"]):
        done = subprocess.run(command, capture_output=True, text=True)
        print(done.stdout or done.stderr, end="")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/local_slurm.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    try:
        {"up": up, "down": down, "status": status}[args.action]()
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
