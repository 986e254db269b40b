"""Stand-ins for system commands (sacct, squeue, sinfo) that a test puts first on PATH."""

from __future__ import annotations

from pathlib import Path


def fake_command(folder: Path, name: str, stdout: str, stderr: str = "", code: int = 0) -> None:
    """An executable `name` in `folder` that prints what it is told and records its arguments."""
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {folder / (name + '.calls')}\nprintf '%s' '{stdout}'\n"
                      f"printf '%s' '{stderr}' >&2\nexit {code}\n")
    script.chmod(0o755)
