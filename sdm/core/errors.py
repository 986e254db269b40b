"""Errors that reach users: each carries a message that names what is wrong and what to do."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class SDMError(Exception):
    """Base class of the errors the command-line tools report without a traceback."""

    prefix = "error"
    exit_code = 2


class DataError(SDMError):
    """A data source is unreachable, malformed, or holds bad rows."""


class ConfigError(SDMError):
    """A configuration value is missing or out of range."""


class CheckpointError(SDMError):
    """A checkpoint or exported model cannot be used."""


def exit_on_sdm_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a CLI entry point: print an `SDMError` as one clear message and exit with its status
    (2 for errors, 128 + signal for a run stopped by a signal)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SDMError as err:
            print(f"{err.prefix}: {err}", file=sys.stderr)
            sys.exit(err.exit_code)

    return wrapper
