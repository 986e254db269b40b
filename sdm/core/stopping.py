"""Stop signals: a SLURM time limit or preemption (SIGTERM, or submitit's SIGUSR2), `scancel`,
`kill`, Ctrl-C (SIGINT). The run finishes its step, writes `last.ckpt`, and stops with exit
128 + signal (130 for Ctrl-C) and the command that continues it; under submitit the job is then
requeued by submitit itself.

Lightning's own SIGTERM handling stops without a checkpoint and exits 0, and its SLURM
auto-requeue clashes with submitit's (shared/FACTS.md), so the project handles the signals.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from sdm.core.errors import SDMError

# Ctrl-C too: Lightning's own answer to it is exit 1 without a checkpoint
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class TrainingStopped(SDMError):
    """Training stopped on a signal after writing a checkpoint; the exit code is 128 + signal."""

    prefix = "stopped"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
        self.signum = signum


class StopSignals:
    """Records the first stop signal instead of dying on it; hands it on when asked.

    `forward_to`: the process ids to pass each signal on to (the ranks of `ddp_spawn`, whose
    parent is the process that `kill` or submitit's handler reaches)."""

    def __init__(self, forward_to: Callable[[], Iterable[int]] | None = None) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._forward_to = forward_to

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            if signum == signal.SIGINT and signal.getsignal(signum) is signal.SIG_IGN:
                continue  # a background job (`&`, nohup): the terminal's Ctrl-C is not for it
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            # os.write, not print: a signal landing inside a print would make print raise (reentrant call)
            os.write(2, f"received {signal.Signals(signum).name}: stopping after this step with a checkpoint\n".encode())
        for pid in self._forward_to() if self._forward_to else ():
            with contextlib.suppress(ProcessLookupError):  # that rank has ended already
                os.kill(pid, signum)

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
            print(f"stopped: {message}; handing over to submitit, which requeues the job (it resumes from there) "
                  "unless hydra.launcher.max_num_timeout is used up", file=sys.stderr, flush=True)
            self.uninstall()
            try:
                previous(self.received, None)  # requeues and exits, or raises when it will not requeue
            except Exception as err:
                if not type(err).__module__.startswith("submitit"):
                    raise
                print(f"stopped: submitit did not requeue the job ({err}); to continue from the checkpoint, "
                      "submit again with the same overrides and hydra.sweep.dir=<this sweep dir>",
                      file=sys.stderr, flush=True)


def outlive_stop_signals_of_others() -> None:
    """For a DataLoader worker: SLURM signals every process of a job, and a worker dying of it
    would crash the trainer (PyTorch raises on a dead worker) before it writes its checkpoint. So
    the worker ignores SIGUSR1/2, and a SIGTERM unless its parent, the trainer, sent it: that is
    how `multiprocessing` ends workers at exit, and ignoring it would hang the trainer there. A
    thread takes SIGTERM with its sender's pid (sigwaitinfo); the worker ends with its trainer.

    Only in a child process of `multiprocessing`: a process started otherwise (a trainer, a test)
    keeps its signals, which its own children would inherit ignored or blocked."""
    if multiprocessing.parent_process() is None:
        return
    for signum in STOP_SIGNALS:
        if signum != signal.SIGTERM:
            signal.signal(signum, signal.SIG_IGN)
    trainer = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit it

    def wait_for_sigterm() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == trainer:
                os._exit(0)

    threading.Thread(target=wait_for_sigterm, name="sigterm-from-trainer", daemon=True).start()


def _is_submitit_handler(handler: Any) -> bool:
    owner = getattr(handler, "__self__", None)
    return isinstance(handler, Callable) and type(owner).__module__.startswith("submitit")


def error_from_worker(report: str) -> Exception | None:
    """The project's error that a spawned rank raised, rebuilt from the traceback text that
    torch.multiprocessing hands the parent; None when it was not one of the project's."""
    # the traceback ends with "module.Class: message", the message possibly over several lines
    matches = list(re.finditer(r"^(sdm(?:\.\w+)+)\.(\w+): ", report, re.MULTILINE))
    if not matches:
        return None
    found = matches[-1]
    try:
        cls = getattr(importlib.import_module(found.group(1)), found.group(2))
    except (ImportError, AttributeError):
        return None
    if not (isinstance(cls, type) and issubclass(cls, SDMError)):
        return None
    message = report[found.end():].strip()
    if issubclass(cls, TrainingStopped):
        name = re.match(r"(SIG[A-Z0-9]+)", message)
        return TrainingStopped(message, getattr(signal, name.group(1)) if name else signal.SIGTERM)
    return cls(message)
