"""Digests that let every loader refuse a damaged file, and the check for non-finite weights.

torch's zip container and safetensors store no checksum of the tensor bytes: a flipped block
in the middle of a checkpoint loads silently. So each file the project writes carries a
SHA-256 of its contents (every tensor byte and every plain value), recomputed when it is read.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

DIGEST_KEY = "sdm_digest"


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor (any dtype, bf16 included), without a copy where it can."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest.update(tensor_bytes(value))
    elif isinstance(value, dict):
        digest.update(b"{")
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[" if isinstance(value, list) else b"(")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(f"{type(value).__name__}:{value!r};".encode())


def content_digest(value: Any) -> str:
    """SHA-256 over a nest of dicts, lists, tensors and plain values, in their stored order."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def first_non_finite(weights: dict[str, torch.Tensor]) -> tuple[str, int] | None:
    """(name of the first tensor holding NaN or inf, how many tensors do), or None."""
    bad = [name for name, tensor in weights.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    return (bad[0], len(bad)) if bad else None
