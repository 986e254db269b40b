"""Child processes that end with their parent: a pipeline's stages, `sample.py devices=N`'s workers.

A parent killed with SIGKILL runs no clean-up, so the kernel has to tell its children:
Linux's parent-death signal (prctl PR_SET_PDEATHSIG). Elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def end_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Ask the kernel for `signum` when this process's parent dies; if `parent_pid` has died
    already (before the request was in place), end now."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        return  # not fatal: the process only loses this safety net
    if os.getppid() != parent_pid:  # the parent died between fork and prctl
        os.kill(os.getpid(), signum)


def preexec_ending_with(parent_pid: int, signum: int = signal.SIGTERM):
    """A `subprocess.Popen(preexec_fn=...)` that makes the child end with `parent_pid`."""
    return lambda: end_with_parent(parent_pid, signum)
