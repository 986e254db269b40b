"""Start-up checks of a composed config: fail with the key named, before any data work."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from sdm.core.checks import number, require
from sdm.core.errors import ConfigError
from sdm.data.classes import class_table
from sdm.data.mixing import extra_ratio
from sdm.data.rows import parse_size
from sdm.diffusion import SAMPLERS
from sdm.diffusion.schedule import BETA_SCHEDULES, PREDICTION_TYPES
from sdm.models import build_unet

PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "64-true")


NUMERIC_KEYS = {
    "trainer.max_steps": int, "trainer.accumulate_grad_batches": int, "trainer.num_nodes": int,
    "optim.lr": float, "optim.warmup_steps": int, "optim.finetune_warmup_steps": int, "optim.weight_decay": float, "optim.min_lr_ratio": float,
    "ema.decay": float, "guidance.drop_prob": float, "sampler.guidance_scale": float,
    "sampler.num_steps": int, "data.batch_size": int, "data.val_fraction": float,
    "diffusion.num_train_timesteps": int, "diffusion.beta_start": float, "diffusion.beta_end": float,
    "validation.every_n_steps": int, "validation.num_steps": int, "checkpoint.every_n_steps": int,
    "loss.vlb_weight": float, "loss.diverged_above": float, "seed": int,
}


def check_train_config(cfg: DictConfig) -> None:
    """Range checks of the keys people override most; raises `ConfigError` naming the key."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as err:  # missing mandatory value or broken interpolation
        raise ConfigError(f"config cannot be resolved: {err}") from None
    for key, kind in NUMERIC_KEYS.items():
        number(cfg, key, kind)
    class_table(cfg.data)  # the class table, and that data.num_classes agrees with it
    d = cfg.diffusion
    require(d.schedule in BETA_SCHEDULES, "diffusion.schedule", d.schedule, f"one of {sorted(BETA_SCHEDULES)}")
    require(d.prediction_type in PREDICTION_TYPES, "diffusion.prediction_type", d.prediction_type,
            f"one of {list(PREDICTION_TYPES)}")
    require(int(d.num_train_timesteps) >= 2, "diffusion.num_train_timesteps", d.num_train_timesteps, ">= 2")
    require(0 < float(d.beta_start) < float(d.beta_end) < 1, "diffusion.beta_start/beta_end",
            [d.beta_start, d.beta_end], "0 < beta_start < beta_end < 1")
    t, o = cfg.trainer, cfg.optim
    require(int(t.max_steps) > 0, "trainer.max_steps", t.max_steps, "a positive number of steps")
    require(int(t.accumulate_grad_batches) >= 1, "trainer.accumulate_grad_batches",
             t.accumulate_grad_batches, "an integer >= 1")
    require(str(t.precision) in PRECISIONS, "trainer.precision", t.precision, f"one of {PRECISIONS}")
    require(0 < float(o.lr) <= 1, "optim.lr", o.lr, "a learning rate in (0, 1] (the paper's is 1e-4)")
    require(float(cfg.loss.diverged_above) > 0, "loss.diverged_above", cfg.loss.diverged_above, "a positive loss")
    require(int(o.warmup_steps) >= 0, "optim.warmup_steps", o.warmup_steps, "an integer >= 0")
    require(o.schedule in ("cosine", "constant"), "optim.schedule", o.schedule, "'cosine' or 'constant'")
    require(0 < float(cfg.ema.decay) < 1, "ema.decay", cfg.ema.decay, "a value in (0, 1)")
    require(cfg.ema.on_finetune in ("continue", "restart"), "ema.on_finetune", cfg.ema.on_finetune,
            "'continue' (the paper's: the fine-tune carries stage 1's EMA on) or 'restart'")
    require(int(o.finetune_warmup_steps) >= 0, "optim.finetune_warmup_steps", o.finetune_warmup_steps, "an integer >= 0")
    drop = float(cfg.guidance.drop_prob)
    require(0 <= drop <= 1, "guidance.drop_prob", drop, "a probability in [0, 1]")
    require(cfg.sampler.name in SAMPLERS, "sampler.name", cfg.sampler.name, f"one of {sorted(SAMPLERS)}")
    require(float(cfg.sampler.guidance_scale) >= 0, "sampler.guidance_scale", cfg.sampler.guidance_scale, ">= 0")
    require(int(cfg.data.batch_size) >= 1, "data.batch_size", cfg.data.batch_size, "an integer >= 1")
    if cfg.data.get("extra"):
        extra_ratio(cfg.data)
        require(not cfg.data.get("streaming", False), "data.extra", cfg.data.extra,
                "unset with data.streaming=true: synthetic rows mix into a prepared source only")
    check_size_and_model(cfg)
    workers = cfg.data.get("num_workers", 0)
    require(isinstance(workers, int) and workers >= 0, "data.num_workers", workers, "an integer >= 0")
    val = cfg.validation
    require(int(val.every_n_steps) >= 1, "validation.every_n_steps", val.every_n_steps, "an integer >= 1")
    require(int(val.num_steps) >= 1, "validation.num_steps", val.num_steps, "an integer >= 1")
    ckpt = cfg.checkpoint
    require(int(ckpt.every_n_steps) >= 1, "checkpoint.every_n_steps", ckpt.every_n_steps, "an integer >= 1")


def check_size_and_model(cfg: DictConfig) -> None:
    """The image size parses, and the U-Net builds at it: a dry build on the meta device (no
    memory, no time) turns any constraint of the network into an error naming the model."""
    import torch


    size = cfg.data.size
    shown = OmegaConf.to_object(size) if OmegaConf.is_config(size) else size
    try:
        height, width = parse_size(shown)
    except ValueError:
        raise ConfigError(f"data.size={shown!r} is invalid: expected an int or [height, width], "
                          "each side in 8..4096") from None
    factor = 2 ** (len(cfg.model.channel_mult) - 1)
    require(height % factor == 0 and width % factor == 0, "data.size", shown,
            f"sides divisible by {factor} (the downsampling of model={cfg.model.name})")
    try:
        with torch.device("meta"):
            build_unet(OmegaConf.to_container(cfg, resolve=True))
    except (ValueError, TypeError, AssertionError, RuntimeError) as err:
        raise ConfigError(f"model={cfg.model.name} cannot be built with these settings: {err}") from None


def check_accelerator(trainer: DictConfig) -> None:
    """A GPU run on a machine without one fails here, not inside Lightning's device setup."""
    import torch

    accelerator = str(trainer.accelerator)
    if accelerator not in ("gpu", "cuda"):
        return
    found = torch.cuda.device_count()
    require(found > 0, "trainer.accelerator", accelerator,
            "'cpu' or 'auto' on this machine: it has no visible GPU (check CUDA_VISIBLE_DEVICES and the driver)")
    devices = trainer.devices
    if isinstance(devices, int) and devices > found:
        require(False, "trainer.devices", devices, f"at most {found}: this machine has {found} visible GPU(s)")
