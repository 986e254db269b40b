"""Checkpoint files: atomic writes, finding the newest complete one, EMA weights in and out.

Full Lightning checkpoints hold raw and EMA weights, optimizer, schedulers and loop state.
Exports hold the EMA weights alone as safetensors with the resolved config beside them,
which is what `sample.py` reads. Everything is loaded with `weights_only=True`. Reading weights never imports Lightning.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sdm.atomic import write_atomically
from sdm.errors import CheckpointError

EMA_PREFIX = "ema.module."
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"
EXPORT_WEIGHTS = "ema.safetensors"
EXPORT_CONFIG = "config.yaml"


def save_checkpoint_file(checkpoint: dict[str, Any], path: str | Path) -> None:
    """`torch.save` to a temporary name in the same folder, fsync, then rename."""
    write_atomically(Path(path), lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint as plain tensors and containers; code-carrying pickles are refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if code is None:
            raise CheckpointError(f"'{path}' is not a readable checkpoint (corrupted or truncated?)") from None
        raise CheckpointError(
            f"'{path}' is not a plain-weights checkpoint (it asks to import {code.group(1)}); refusing to load it"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"'{path}' is not a readable checkpoint (corrupted or truncated?): {err}") from None


def is_complete(path: Path) -> bool:
    """True when the file opens as a checkpoint (cheap: memory-mapped, weights only)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return True
    except Exception:
        return False


def find_latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete `.ckpt` of a run (last.ckpt or any periodic one), or None."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    return next((p for p in candidates if not p.name.startswith(".") and is_complete(p)), None)


def ema_state_dict(checkpoint: dict[str, Any], origin: str) -> dict[str, torch.Tensor]:
    """The EMA U-Net weights of a full Lightning checkpoint."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"'{origin}' has no 'state_dict': not a Lightning checkpoint of sdm")
    ema = {k[len(EMA_PREFIX) :]: v for k, v in state.items() if k.startswith(EMA_PREFIX)}
    if not ema:
        raise CheckpointError(f"'{origin}' holds no EMA weights (keys '{EMA_PREFIX}*')")
    return ema


def resolve_weights_source(source: str | Path) -> Path:
    """A run dir, an export dir, a .ckpt or a .safetensors -> the file holding EMA weights."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / EXPORT_DIR / EXPORT_WEIGHTS, path / EXPORT_WEIGHTS):
            if candidate.is_file():
                return candidate
        latest = find_latest_checkpoint(path)
        if latest is not None:
            return latest
        raise CheckpointError(f"'{path}' holds no export ({EXPORT_DIR}/{EXPORT_WEIGHTS}) and no complete checkpoint")
    raise CheckpointError(f"'{source}' does not exist (expected a run dir, a .ckpt or a .safetensors file)")


def load_ema_weights(source: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """EMA weights from a run dir, export, or checkpoint, plus the file they came from."""
    path = resolve_weights_source(source)
    if path.suffix == ".safetensors":
        try:
            return load_file(path), path
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"'{path}' is not a readable safetensors file: {err}") from None
    return ema_state_dict(load_checkpoint(path), str(path)), path


def load_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], origin: str) -> None:
    """Strictly load weights, explaining a size mismatch in terms of the model config."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    mismatched = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if missing or unexpected or mismatched:
        detail = (
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]}), {len(mismatched)} with other shapes"
        )
        if mismatched:
            k = mismatched[0]
            detail += f" (e.g. {k}: {tuple(weights[k].shape)} there, {tuple(own[k].shape)} here)"
        raise CheckpointError(
            f"'{origin}' does not fit this model: {detail}. Use the same model=... preset (and "
            "data.num_classes, model.edge_channel) as the run that wrote it"
        )
    model.load_state_dict(weights, strict=True)


def export_ema(weights: dict[str, torch.Tensor], config: dict[str, Any], out_dir: str | Path) -> Path:
    """Write EMA weights as safetensors and the resolved config as YAML, both atomically."""
    out_dir = Path(out_dir)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    write_atomically(out_dir / EXPORT_WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    text = yaml.safe_dump(config, sort_keys=False)
    write_atomically(out_dir / EXPORT_CONFIG, lambda tmp: Path(tmp).write_text(text))
    return out_dir / EXPORT_WEIGHTS


def read_export_config(weights_path: Path) -> dict[str, Any]:
    config = weights_path.with_name(EXPORT_CONFIG)
    if not config.is_file():
        raise CheckpointError(f"'{weights_path}' has no {EXPORT_CONFIG} beside it; re-export the run")
    return yaml.safe_load(config.read_text())
