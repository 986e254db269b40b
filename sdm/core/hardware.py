"""What this machine computes natively: bf16 pays on CPUs with AVX-512 BF16 or AMX, and only there."""

from __future__ import annotations

from pathlib import Path

import torch

from sdm.core.checks import require
from sdm.core.errors import ConfigError


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere torch emulates
    it and bf16 autocast runs many times slower than float32 (measured 13x on an AVX2 machine)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: keep what was asked
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_device(spec: str) -> torch.device:
    """auto -> the GPU when there is one; an explicit cuda without a GPU is an error, not a fallback."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        device = None
    require(device is not None and device.type in ("cpu", "cuda"), "device", spec, "auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={spec} but no CUDA GPU is visible here; use device=cpu or device=auto")
    return device
