"""Seeds derived from coordinates, so random streams never depend on batching or workers."""

from __future__ import annotations

import hashlib


def stable_seed(*parts: int | str) -> int:
    """A 62-bit seed that is a pure function of `parts` (same on every machine and run)."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2
