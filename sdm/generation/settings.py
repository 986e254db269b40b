"""Range checks of every sample.py setting, made before any weights or data are read."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sdm.core.checks import number, require
from sdm.core.errors import ConfigError
from sdm.diffusion import SAMPLERS
from sdm.diffusion.sampling import TIMESTEP_SPACINGS
from sdm.generation.masks import VARIATIONS
from sdm.generation.shards import parse_shard

PRECISIONS = ("bf16", "fp32")


def check_settings(cfg: DictConfig) -> None:
    """Range checks of every sample.py setting, before any weights or data are read."""
    if OmegaConf.is_missing(cfg, "weights") or not cfg.weights:
        raise ConfigError("weights=... is required: a run dir, its export dir, a .ckpt or a .safetensors file")
    s = cfg.sampler
    require(s.name in SAMPLERS, "sampler.name", s.name, f"one of {sorted(SAMPLERS)} (sampler=ddim|ddpm|dpmpp|unipc)")
    scale = number(cfg, "sampler.guidance_scale", float)
    require(math.isfinite(scale) and scale >= 0, "sampler.guidance_scale", scale,
             "a number >= 0 (1 = no guidance, 1.5 = the paper's)")
    require(number(cfg, "sampler.num_steps") >= 1, "sampler.num_steps", s.num_steps, "an integer >= 1")
    require(number(cfg, "sampler.eta", float) >= 0, "sampler.eta", s.eta, "a number >= 0")
    require(s.timestep_spacing in TIMESTEP_SPACINGS, "sampler.timestep_spacing", s.timestep_spacing,
             f"one of {list(TIMESTEP_SPACINGS)}")
    require(number(cfg, "num_per_mask") >= 1, "num_per_mask", cfg.num_per_mask, "an integer >= 1")
    require(number(cfg, "batch_size") >= 1, "batch_size", cfg.batch_size, "an integer >= 1")
    require(cfg.limit is None or number(cfg, "limit") >= 1, "limit", cfg.limit, "null or an integer >= 1")
    require(number(cfg, "seed") >= 0, "seed", cfg.seed, "an integer >= 0")
    require(cfg.precision in PRECISIONS, "precision", cfg.precision, f"one of {list(PRECISIONS)}")
    require(number(cfg, "devices") >= 1, "devices", cfg.devices, "an integer >= 1 (processes on this machine)")
    parse_shard(cfg.shard)
    variations = cfg.get("mask_variation")
    require(variations is None or (OmegaConf.is_list(variations) and all(v in VARIATIONS for v in variations)),
            "mask_variation", variations, f"a list of {list(VARIATIONS)} (e.g. mask_variation=[hflip,crop]) or []")
    source = cfg.get("mask_source")
    require(source is None or OmegaConf.is_dict(source), "mask_source", source,
            "null or data settings laid over the run's, e.g. 'mask_source={path:/data/other}'")
    size = cfg.get("export_size")
    require(size is None or (OmegaConf.is_list(size) and len(size) == 2 and all(isinstance(v, int) and v >= 1 for v in size)),
            "export_size", size, "null or [height, width] of integers >= 1")
    target = cfg.get("export_dir")
    if cfg.get("export") and target and Path(str(target)).expanduser().exists() \
            and not (Path(str(target)).expanduser() / "sdm_export.json").is_file():
        raise ConfigError(f"export_dir={target} exists and is not an sdm export; choose another folder")
