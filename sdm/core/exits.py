"""How a command ends when something goes wrong: one line and an exit status, never a traceback
for what users cause (bad settings, full disks, Ctrl-C)."""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sdm.core.atomic import describe_write_failure
from sdm.core.errors import SDMError

T = TypeVar("T")

INTERRUPTED = "interrupted; re-run the same command to continue"
_command_running = False  # set by exit_on_sdm_error: from then on Ctrl-C is a KeyboardInterrupt it reports
# failed writes that reach a command's top from inside a library (pyarrow, TensorBoard, PIL)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST}


def exit_on_sdm_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a command's entry point so that it never ends in a traceback for what users cause:
    an `SDMError` is one `error:` line and its exit status (2, or 128 + signal for a run stopped
    by a signal); Ctrl-C is one line and exit 130; a failed write deep in a library is one line
    naming the file and the cause (a full disk, a read-only folder)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _command_running
        _command_running = True
        try:
            return fn(*args, **kwargs)
        except SDMError as err:
            print(f"{err.prefix}: {err}", file=sys.stderr)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            print(f"\n{INTERRUPTED}", file=sys.stderr)
            sys.exit(130)
        except OSError as err:
            if err.errno not in WRITE_ERRNOS or not err.filename:
                raise
            print(f"error: {describe_write_failure(Path(err.filename), err)}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def quiet_ctrl_c_while_starting() -> None:
    """Ctrl-C during a command's first seconds (importing torch and Lightning, composing its
    config) ends it with the same one line and exit 130, not a traceback from inside an import.
    Once the command runs, Ctrl-C is a KeyboardInterrupt again, which exit_on_sdm_error reports
    after the `finally` blocks have cleaned up."""

    def on_ctrl_c(signum: int, frame: object) -> None:
        if _command_running:
            raise KeyboardInterrupt
        os.write(2, f"\n{INTERRUPTED}\n".encode())
        os._exit(130)  # nothing is written before the command runs: nothing to clean up

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return  # started in the background (`cmd &`, nohup): Ctrl-C is not meant for it, as Python itself holds
    signal.signal(signal.SIGINT, on_ctrl_c)
