"""Errors that reach users: each carries a message that names what is wrong and what to do."""

from __future__ import annotations


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
