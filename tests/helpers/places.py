"""Bad places for the fault tests: small or read-only tmpfs mounts (root, as in CI)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def mount_tmpfs(folder: Path, size: str = "256k", read_only: bool = False) -> Path:
    """`folder` on its own small tmpfs; skips the test where mounting needs a root it does not have
    (fails instead where SDM_REQUIRE_TMPFS is set, as .ci/run does)."""
    folder.mkdir(parents=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        if os.environ.get("SDM_REQUIRE_TMPFS"):
            pytest.fail(f"could not mount a tmpfs (needs root): {done.stderr.decode().strip()}")
        pytest.skip("mounting a tmpfs needs root (CI runs as root and sets SDM_REQUIRE_TMPFS=1)")
    return folder


def unmount_all(root: Path) -> None:
    """Every tmpfs mounted under `root` (deepest first)."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1].startswith(str(root) + "/")]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", mount], check=False)
