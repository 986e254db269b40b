"""Atomic file writes: a temporary name in the same folder, fsync, then rename.

A crash (even SIGKILL) mid-write leaves either the old file or the new one, never half of
one; concurrent writers never share a temporary name. Temporary names carry their writer's
host and pid, so that the leftovers of a killed writer can be told from a live one's work.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdm.core.errors import SDMError

_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())


class WriteError(SDMError):
    """A file could not be written (disk full, read-only folder, no permission)."""


def temporary_name(path: str | Path, kind: str = "partial") -> Path:
    """A hidden sibling of `path` that names its writer: `.<name>.<kind>-<host>-<pid>-<tag>`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


def _writer_is_dead(host: str, pid: int) -> bool:
    if host != _HOST:
        return False  # another machine's writer may be alive: leave its work alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_leftovers(folder: str | Path, kind: str = "partial", name: str = "*") -> list[Path]:
    """Delete the temporaries that writers on this host left when they were killed."""
    removed = []
    pattern = re.compile(rf"^\..+\.{re.escape(kind)}-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-[0-9a-f]+$")
    for entry in Path(folder).glob(f".{name}.{kind}-*"):
        match = pattern.match(entry.name)
        if match and _writer_is_dead(match["host"], int(match["pid"])):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def describe_write_failure(path: Path, err: BaseException) -> str:
    """One sentence naming the folder and the cause of a failed write."""
    folder = path.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    code = getattr(err, "errno", None)
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or not os.access(existing, os.W_OK):
        return f"{folder} is not writable (read-only or no permission): could not write {path.name}"
    free = shutil.disk_usage(existing).free
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(err) or "quota" in str(err) or free < 2**20:
        return (f"the disk holding {folder} is full or over quota ({free / 2**20:.1f} MiB free): could not write "
                f"{path.name}. "
                "Free space or point the run elsewhere")
    return f"could not write {path.name} in {folder}: {err}"


def ensure_writable(folder: str | Path) -> None:
    """Create `folder` and prove it takes a file, so a run stops before its work, not after it."""
    probe = Path(folder) / ".sdm-write-test"
    write_atomically(probe, lambda tmp: tmp.write_bytes(b"sdm"))
    probe.unlink(missing_ok=True)


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write through `write(tmp_path)` and rename to `path` when it is complete. A failure to
    write (full disk, read-only folder) is a WriteError naming the folder; the old file stays."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(describe_write_failure(path, err)) from None
    tmp = temporary_name(path)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as err:  # torch says RuntimeError, safetensors SafetensorError, files OSError
        if not isinstance(err, OSError) and not _is_io_failure(err):
            raise
        raise WriteError(describe_write_failure(path, err)) from None
    finally:
        with contextlib.suppress(OSError):  # a read-only folder refuses even the clean-up
            tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> None:
    """JSON written under a temporary name and renamed, so readers never see half a file (values JSON
    cannot hold, such as paths, are written as text)."""
    text = json.dumps(data, indent=2, default=str)
    write_atomically(path, lambda tmp: tmp.write_text(text))


def _is_io_failure(err: Exception) -> bool:
    # torch.save reports a failed write as RuntimeError("[enforce fail at inline_container.cc...")
    text = str(err)
    return any(sign in text for sign in ("inline_container", "file write failed", "unexpected pos", "iostream error",
                                         "No space left", "Disk quota", "Read-only file system", "I/O error"))
