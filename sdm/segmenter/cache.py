"""Where trained segmenters live: one folder per dataset, size, architecture and seed, holding the
weights and an info file with the held-out scores and the calibration."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from sdm.checkpoint.files import load_safetensors
from sdm.core.configs import CONFIG_DIR
from sdm.core.errors import CheckpointError, ConfigError
from sdm.data.mixing import extra_ratio, extra_source_cfg
from sdm.data.prepare import prepare_data
from sdm.segmenter.networks import build_segmenter

WEIGHTS_FILE = "segmenter.safetensors"
INFO_FILE = "segmenter.json"


def default_segmenter_settings() -> dict[str, Any]:
    """The `segmenter:` block of conf/segmenter.yaml (architecture, steps, cache folder): what the
    evaluation trains and the export's filter finds by default."""
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "segmenter.yaml").segmenter, resolve=True)


def cache_folder(data_key: str, settings: dict[str, Any], seed: int = 0) -> Path:
    """One folder per prepared dataset (source, size, resize), architecture, seed and starting weights."""
    name = f"{data_key}-{settings['arch']}" + (f"-w{settings['width']}" if settings["arch"] in ("unet", "small") else "")
    name += f"-seed{seed}" if seed else ""
    if settings.get("init"):  # fine-tuned from another segmenter: never the one trained from scratch,
        weights = Path(str(settings["init"])).expanduser() / WEIGHTS_FILE  # nor one from other weights
        name += "-from" + hashlib.blake2b(weights.read_bytes(), digest_size=4).hexdigest()
    return Path(str(settings["cache_dir"])).expanduser() / name


def load_segmenter(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A trained segmenter (eval mode, CPU) and its info (architecture, data, held-out scores)."""
    folder = Path(folder)
    info_path, weights_path = folder / INFO_FILE, folder / WEIGHTS_FILE
    if not info_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"'{folder}' holds no trained segmenter ({INFO_FILE} and {WEIGHTS_FILE})")
    try:
        info = json.loads(info_path.read_text())
        network = build_segmenter(info["arch"], int(info["num_classes"]), int(info.get("width", 16)))
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"'{info_path}' is not a segmenter's info file ({type(err).__name__}: {err})") from None
    state = load_safetensors(weights_path)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"'{weights_path}' does not fit a {info['arch']} segmenter: "
                              f"{str(err).splitlines()[0]}") from None
    return network.eval().requires_grad_(False), info


def data_key(data: DictConfig, real_key: str) -> str:
    """The cache key of what a segmenter trains on: the real rows' key, and with data.extra the
    synthetic rows' key and share, so a mixed segmenter never stands in for the real data's one."""
    if not data.get("extra"):
        return real_key
    synthetic = prepare_data(extra_source_cfg(data), show_progress=False)
    return f"{real_key}+{synthetic.root.name}-r{extra_ratio(data):g}"


def starting_weights(settings: dict[str, Any], num_classes: int) -> dict[str, Any] | None:
    """The weights `segmenter.init` names (a trained segmenter's folder), checked to fit the network
    about to be trained: pre-training on synthetic rows, then fine-tuning on real ones."""
    if not settings.get("init"):
        return None
    folder = Path(str(settings["init"])).expanduser()
    try:
        network, info = load_segmenter(folder)
    except CheckpointError as err:
        raise ConfigError(f"segmenter.init={settings['init']}: {err}") from None
    wanted = (settings["arch"], int(settings.get("width", 16)), num_classes)
    found = (info["arch"], int(info.get("width", 16)), int(info["num_classes"]))
    if found != wanted:
        raise ConfigError(f"segmenter.init={settings['init']} holds a {found[0]} of width {found[1]} for {found[2]} "
                          f"classes; this training builds a {wanted[0]} of width {wanted[1]} for {wanted[2]}")
    return network.state_dict()
