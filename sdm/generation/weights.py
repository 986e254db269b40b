"""The EMA U-Net of a trained run: weights and training config read through sdm.checkpoint.files,
the network built by sdm.models (never through the LightningModule), and a fingerprint of
the weights that tells a resumed generation whether they changed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdm.checkpoint.files import (
    ema_state_dict,
    load_checkpoint,
    load_ema_weights,
    load_into,
    read_export_config,
    resolve_weights_source,
)
from sdm.core.errors import CheckpointError
from sdm.data.rows import parse_size
from sdm.models import SDMUNet, build_unet

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


@dataclass(frozen=True)
class Model:
    """The EMA U-Net with the resolved config of the run that trained it."""

    unet: SDMUNet
    cfg: dict[str, Any]
    path: Path
    fingerprint: str

    @property
    def size(self) -> tuple[int, int]:
        return parse_size(self.cfg["data"]["size"])




def read_weights(source: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """EMA weights and training config: config.yaml beside an export, hyper_parameters in a .ckpt."""
    path = resolve_weights_source(source)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"weights='{path}' is not a weights file ({', '.join(WEIGHT_SUFFIXES)}); give a "
                              "run dir, its export dir, a .ckpt or an ema.safetensors")
    if path.suffix == ".safetensors":
        weights, _ = load_ema_weights(path)
        return weights, read_export_config(path), path
    checkpoint = load_checkpoint(path)
    hyper = checkpoint.get("hyper_parameters")
    cfg = hyper.get("cfg") if isinstance(hyper, dict) else None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"'{path}' carries no training config (hyper_parameters['cfg']): not a checkpoint of sdm")
    return ema_state_dict(checkpoint, str(path)), cfg, path


def weights_fingerprint(weights: dict[str, torch.Tensor]) -> str:
    """An identity of a set of weights: names, shapes, dtypes and every byte of every tensor.

    It tells a resumed generation whether the weights changed (a run trained further and
    exported again under the same path, or a damaged file). Hashing all bytes costs about a
    second per GB, far less than sampling.
    """
    digest = hashlib.blake2b(digest_size=10)
    for name in sorted(weights):
        tensor = weights[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_model(source: str | Path) -> Model:
    """The EMA U-Net of a run dir, export, .ckpt or .safetensors, in eval mode on the CPU."""
    weights, cfg, path = read_weights(source)
    missing = [key for key in ("model", "data", "diffusion") if not isinstance(cfg.get(key), dict)]
    if missing:
        raise CheckpointError(f"the training config of '{path}' lacks {missing}; re-export the run")
    try:
        unet = build_unet(cfg)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"the config of '{path}' does not build a U-Net of this sdm version: {err}") from None
    load_into(unet, weights, str(path))
    return Model(unet.eval().requires_grad_(False), cfg, path, weights_fingerprint(weights))

