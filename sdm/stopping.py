"""Stop signals: a SLURM time limit or preemption (SIGTERM, or submitit's SIGUSR2), `scancel`,
`kill`. The run finishes its step, writes `last.ckpt`, and stops with a non-zero exit and the
command that continues it; under submitit the job is then requeued by submitit itself.

Lightning's own SIGTERM handling stops without a checkpoint and exits 0, and its SLURM
auto-requeue clashes with submitit's (shared/FACTS.md), so the project handles the signals.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from sdm.errors import SDMError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class TrainingStopped(SDMError):
    """Training stopped on a signal after writing a checkpoint; the exit code is 128 + signal."""

    prefix = "stopped"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
        self.signum = signum


class StopSignals:
    """Records the first stop signal instead of dying on it; hands it on when asked."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            # os.write, not print: a signal landing inside a print would make print raise (reentrant call)
            os.write(2, f"received {signal.Signals(signum).name}: stopping after this step with a checkpoint\n".encode())

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._record:  # Lightning may have restored its own already
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def hand_on(self, message: str) -> None:
        """Call the handler that was there before for the received signal: submitit's requeues
        the job and exits (so `message` is printed first); a default one is not called (the
        caller raises TrainingStopped, exit 128 + signal)."""
        previous = self._previous.get(self.received) if self.received is not None else None
        if _is_submitit_handler(previous):
            print(f"stopped: {message}; submitit requeues the job, which resumes from there", file=sys.stderr,
                  flush=True)
            self.uninstall()
            previous(self.received, None)


def _is_submitit_handler(handler: Any) -> bool:
    owner = getattr(handler, "__self__", None)
    return isinstance(handler, Callable) and type(owner).__module__.startswith("submitit")
