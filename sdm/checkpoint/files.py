"""Checkpoint files: atomic writes, finding the newest complete one, EMA weights in and out.

Full Lightning checkpoints hold raw and EMA weights, optimizer, schedulers and loop state.
Exports hold the EMA weights alone as safetensors with the resolved config beside them,
which is what `sample.py` reads. Everything is loaded with `weights_only=True`, and every file
the project writes carries a digest of its contents that each loader checks (sdm.core.integrity).
Reading weights never imports Lightning.
"""

from __future__ import annotations

import errno
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sdm.core.atomic import write_atomically
from sdm.core.errors import CheckpointError
from sdm.core.integrity import DIGEST_KEY, content_digest, first_non_finite

EMA_PREFIX = "ema.module."
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"
EXPORT_WEIGHTS = "ema.safetensors"
EXPORT_CONFIG = "config.yaml"


# errors of the storage, the network or the permissions while reading, which say nothing about
# whether the file is intact
READ_FAILURES = {getattr(errno, name) for name in (
    "EIO", "ESTALE", "ETIMEDOUT", "EAGAIN", "EINTR", "ENOMEM", "EACCES", "EPERM", "ECONNRESET", "ECONNABORTED",
    "ENOTCONN", "EHOSTDOWN", "EHOSTUNREACH", "ENETDOWN", "ENETUNREACH", "ENOLINK", "EREMOTEIO", "ECOMM",
) if hasattr(errno, name)}


class CheckpointReadError(CheckpointError):
    """A checkpoint could not be read (I/O or memory); whether it is intact is unknown."""


def save_checkpoint_file(checkpoint: dict[str, Any], path: str | Path) -> None:
    """`torch.save` with a digest of the contents, to a temporary name, fsync, then rename."""
    stamped = {**checkpoint, DIGEST_KEY: content_digest(checkpoint)}
    write_atomically(Path(path), lambda tmp: torch.save(stamped, tmp))


# files whose digest was checked in this process, by (inode, size, mtime): a resume reads the
# same checkpoint up to three times (finding it, checking its shapes, Lightning's restore)
_verified: dict[Path, tuple[int, int, int]] = {}


def _check_digest(checkpoint: dict[str, Any], path: Path) -> None:
    expected = checkpoint.pop(DIGEST_KEY, None)
    if expected is None:
        return  # written before digests existed (sdm < issue 10), or by another tool
    stat = path.stat()
    identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if _verified.get(path.resolve()) == identity:
        return
    if content_digest(checkpoint) != expected:
        raise CheckpointError(
            f"'{path}' is corrupted: its contents no longer match the digest written with it (a damaged "
            "disk, an interrupted copy or an edited file); refusing to use it. Use another checkpoint of the run"
        )
    _verified[path.resolve()] = identity


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint as plain tensors and containers, its digest checked; code-carrying pickles
    and damaged files are refused with their path."""
    path = Path(path)
    try:
        if not path.is_file():  # is_file() hides I/O errors, which the load below then names
            path.stat()
            raise CheckpointError(f"checkpoint '{path}' is not a file")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{path}' does not exist") from None
    except CheckpointError:
        raise
    except pickle.UnpicklingError as err:
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if code is None:
            raise CheckpointError(f"'{path}' is not a readable checkpoint (corrupted or truncated?)") from None
        raise CheckpointError(
            f"'{path}' is not a plain-weights checkpoint (it asks to import {code.group(1)}); refusing to load it"
        ) from None
    except (OSError, MemoryError) as err:
        if isinstance(err, OSError) and err.errno not in READ_FAILURES:  # e.g. EINVAL: a truncated file
            raise CheckpointError(f"'{path}' is not a readable checkpoint (corrupted or truncated?): {err}") from None
        raise CheckpointReadError(
            f"could not read '{path}': {err!r}. That is a storage or memory failure (an NFS hiccup, a stale "
            "handle), not a sign that the file is damaged: it is not skipped for an older one; retry"
        ) from None
    except Exception as err:  # random bytes can fail anywhere in the unpickler (IndexError, KeyError, ...)
        raise CheckpointError(f"'{path}' is not a readable checkpoint (corrupted or truncated?): {err}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"'{path}' holds a {type(checkpoint).__name__}, not a checkpoint (a dict of state)")
    _check_digest(checkpoint, path)
    return checkpoint


def unusable_reason(path: Path) -> str | None:
    """Why a checkpoint file cannot be resumed from (damaged, truncated, foreign), or None."""
    try:
        load_checkpoint(path, mmap=True)
        return None
    except CheckpointReadError:
        raise  # unreadable now says nothing about the file: resuming an older one would lose steps
    except CheckpointError as err:
        return str(err)


def _recency(path: Path) -> tuple[bool, int, int]:
    """last.ckpt first (every save rewrites it), then step=N.ckpt by N, then by time: a copied
    run dir has new modification times in no particular order."""
    step = re.search(r"step=(\d+)", path.name)
    return path.name == "last.ckpt", int(step.group(1)) if step else -1, path.stat().st_mtime_ns


def find_latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete `.ckpt` of a run (last.ckpt or a periodic step=*.ckpt), or None;
    newer files that are damaged are named and skipped. The best-*.ckpt files are not resume
    points: written after validation, their loop state would shift the logged steps by one."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    candidates = sorted(folder.glob("*.ckpt"), key=_recency, reverse=True)
    for candidate in candidates:
        if candidate.name.startswith((".", "best-")):
            continue
        reason = unusable_reason(candidate)
        if reason is None:
            return candidate
        print(f"skipping {candidate}: {reason}")
    return None


def ema_state_dict(checkpoint: dict[str, Any], origin: str) -> dict[str, torch.Tensor]:
    """The EMA U-Net weights of a full Lightning checkpoint."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"'{origin}' has no 'state_dict': not a Lightning checkpoint of sdm")
    ema = {k[len(EMA_PREFIX) :]: v for k, v in state.items() if k.startswith(EMA_PREFIX)}
    if not ema:
        raise CheckpointError(f"'{origin}' holds no EMA weights (keys '{EMA_PREFIX}*')")
    return ema


def check_resumable(path: str | Path, model: torch.nn.Module) -> None:
    """Refuse, before training starts, a checkpoint that is damaged, carries code, belongs to
    another model or holds non-finite weights; Lightning would fail deep inside, or train on."""
    checkpoint = load_checkpoint(path, mmap=True)
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or "loops" not in checkpoint:
        raise CheckpointError(f"'{path}' is not a training checkpoint of sdm (it has no state_dict and loop "
                              "state); to start from its weights, pass it as init_from=")
    check_weights_fit(model.state_dict(), state, str(path))


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
        return load_safetensors(path), path
    return ema_state_dict(load_checkpoint(path), str(path)), path


UNET_PREFIX = "unet."
EMA_UPDATES_KEY = "ema.n_averaged"


def load_stage_one(source: str | Path, continue_ema: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                                     int | None, Path]:
    """What a fine-tune starts from: (U-Net weights, EMA weights, EMA updates so far, file).

    `continue_ema` (the paper's fine-tune): the U-Net from stage 1's trained weights and the EMA
    going on from stage 1's, so a run dir's newest checkpoint is preferred to its export (which
    holds the EMA only). Otherwise, or when only EMA weights exist, both start from the EMA."""
    path = Path(source).expanduser()
    if continue_ema and path.is_dir():
        path = find_latest_checkpoint(path) or path
    if not continue_ema or resolve_weights_source(path).suffix == ".safetensors":
        ema, found = load_ema_weights(path)
        return ema, ema, None, found
    found = resolve_weights_source(path)
    checkpoint = load_checkpoint(found)
    ema = ema_state_dict(checkpoint, str(found))
    state = checkpoint["state_dict"]
    unet = {k[len(UNET_PREFIX):]: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    updates = state.get(EMA_UPDATES_KEY)
    return unet or ema, ema, int(updates) if updates is not None else None, found


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Tensors as safetensors with a digest in the metadata, written atomically."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in sorted(tensors.items())}
    metadata = {DIGEST_KEY: content_digest(plain)}
    write_atomically(Path(path), lambda tmp: save_file(plain, str(tmp), metadata=metadata))


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, refused with its path when unreadable or damaged."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            expected = (handle.metadata() or {}).get(DIGEST_KEY)
            tensors = {k: handle.get_tensor(k) for k in sorted(handle.keys())}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"'{path}' is not a readable safetensors file (corrupted or truncated?): {err}") from None
    if expected is not None and content_digest(tensors) != expected:
        raise CheckpointError(
            f"'{path}' is corrupted: its tensors no longer match the digest written with them; refusing to use it"
        )
    return tensors


def load_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], origin: str) -> None:
    """Strictly load weights, explaining a size mismatch in terms of the model config."""
    check_weights_fit(model.state_dict(), weights, origin)
    model.load_state_dict(weights, strict=True)


def check_weights_fit(own: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], origin: str) -> None:
    """Refuse weights of another model (names, shapes) or holding NaN or inf, naming the file."""
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
    bad = first_non_finite(weights)
    if bad is not None:
        raise CheckpointError(
            f"'{origin}' holds non-finite weights (NaN or inf) in {bad[0]} and {bad[1] - 1} other tensor(s): "
            "they would make black images. Use an earlier checkpoint of the run (checkpoints/step=*.ckpt)"
        )


def export_ema(weights: dict[str, torch.Tensor], config: dict[str, Any], out_dir: str | Path) -> Path:
    """Write EMA weights as safetensors and the resolved config as YAML, both atomically."""
    out_dir = Path(out_dir)
    save_safetensors(weights, out_dir / EXPORT_WEIGHTS)
    text = yaml.safe_dump(config, sort_keys=False)
    write_atomically(out_dir / EXPORT_CONFIG, lambda tmp: Path(tmp).write_text(text))
    return out_dir / EXPORT_WEIGHTS


def read_export_config(weights_path: Path) -> dict[str, Any]:
    config = weights_path.with_name(EXPORT_CONFIG)
    if not config.is_file():
        raise CheckpointError(f"'{weights_path}' has no {EXPORT_CONFIG} beside it; re-export the run")
    return yaml.safe_load(config.read_text())
