"""Checks of single settings: a bad value stops the command with its key named, not deep inside a library."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from sdm.core.errors import ConfigError


def require(cond: bool, key: str, value: Any, expected: str) -> None:
    """Raise a `ConfigError` naming `key` unless `cond` holds."""
    if not cond:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


def number(cfg: DictConfig, key: str, kind: type = int) -> Any:
    """A numeric setting, with the key named when it is not a number."""
    value = OmegaConf.select(cfg, key)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is invalid: expected a{'n integer' if kind is int else ' number'}") from None
