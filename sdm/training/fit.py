"""`train(cfg)`: build the data, module, loggers and callbacks from a config, fit, export."""

from __future__ import annotations

import datetime as dt
import functools
import math
import shutil
import signal
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from sdm.checkpoint.card import CARD, write_model_card
from sdm.checkpoint.files import (
    CHECKPOINT_DIR,
    EXPORT_DIR,
    check_resumable,
    export_ema,
    find_latest_checkpoint,
    load_into,
    load_stage_one,
)
from sdm.core.atomic import ensure_writable, remove_leftovers
from sdm.core.errors import CheckpointError, ConfigError, SDMError
from sdm.core.hardware import cpu_has_bf16
from sdm.core.stopping import StopSignals, TrainingStopped, error_from_worker
from sdm.data.datamodule import SidewalkDataModule
from sdm.training.callbacks import AtomicCheckpointIO, SameResumePoint
from sdm.training.config import check_accelerator, check_train_config
from sdm.training.module import SDMModule
from sdm.training.validation import validation_scorer

# The DataModule saves and restores its sampler position itself (SidewalkDataModule.state_dict).
warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")


@functools.cache
def _now() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def _run_dir(run_dir: str | None, ckpt_path: str | None, base: str) -> str:
    """Hydra's run dir: the given one, the newest resumable run of `base`, or a new one."""
    if run_dir:
        return str(run_dir)
    if ckpt_path == "last":  # the newest run with checkpoints; if they are all damaged, that is said
        runs = sorted((p for p in Path(base).glob("*") if resume_points(p)), key=lambda p: p.name)
        if runs:
            return str(runs[-1])
    return f"{base}/{_now()}"


def resume_points(run_dir: str | Path) -> list[Path]:
    """The checkpoint files of a run that a resume could start from, intact or not (not best-*)."""
    return sorted(p for p in (Path(run_dir) / CHECKPOINT_DIR).glob("*.ckpt") if not p.name.startswith("best-"))


def register_resolvers() -> None:
    """Resolvers that conf/train.yaml uses; call before Hydra composes the config."""
    if not OmegaConf.has_resolver("sdm.run_dir"):
        OmegaConf.register_new_resolver("sdm.run_dir", _run_dir)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`last` -> the newest complete checkpoint of this run dir (it must exist); `auto` -> the
    same when there is one (a requeued SLURM job), else a fresh start; a path as given."""
    if cfg.ckpt_path in (None, "", "null"):
        return None
    if cfg.ckpt_path in ("last", "auto"):
        latest = find_latest_checkpoint(cfg.output_dir)
        damaged = [p.name for p in resume_points(cfg.output_dir)]
        if latest is None and damaged:  # never start over silently on top of a run's checkpoints
            raise CheckpointError(
                f"ckpt_path={cfg.ckpt_path}: {cfg.output_dir}/{CHECKPOINT_DIR} holds {', '.join(damaged)} but none "
                "of them is usable (see above); restore a good copy, or pass ckpt_path=null to start over"
            )
        if latest is None and cfg.ckpt_path == "auto":
            return None
        if latest is None:
            raise CheckpointError(
                f"ckpt_path=last: no complete checkpoint under {cfg.output_dir}/checkpoints; pass "
                "run_dir=<the run to continue> (runs/<run_name>/<date>) or drop ckpt_path to start fresh"
            )
        return str(latest)
    if not Path(cfg.ckpt_path).is_file():
        raise CheckpointError(f"ckpt_path={cfg.ckpt_path} does not exist")
    return str(cfg.ckpt_path)


def effective_precision(cfg: DictConfig) -> str:
    """The configured precision, or 32-true for bf16 on a CPU without native bf16 (with a notice)."""
    import torch

    precision = str(cfg.trainer.precision)
    on_cpu = cfg.trainer.accelerator == "cpu" or (cfg.trainer.accelerator == "auto" and not torch.cuda.is_available())
    if "bf16" in precision and on_cpu and not cpu_has_bf16():
        print(f"trainer.precision={precision}: this CPU has no native bf16 (no AVX-512 BF16 / AMX), where it "
              "runs many times slower than float32; training in 32-true instead")
        return "32-true"
    return precision


def build_trainer(cfg: DictConfig) -> L.Trainer:
    loggers = [] if cfg.logger.get("_target_") is None else [instantiate(cfg.logger)]
    callbacks = []
    for name, spec in cfg.callbacks.items():
        if spec is None or (name == "lr_monitor" and not loggers):
            continue  # LearningRateMonitor raises without a logger
        if name == "progress_bar" and not cfg.trainer.enable_progress_bar:
            continue
        callbacks.append(instantiate(spec))
    strategy = instantiate(cfg.strategy) if "_target_" in cfg.strategy else cfg.strategy.name
    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # submitit requeues by itself: Lightning must not (FACTS.md)
        plugins.append(SLURMEnvironment(auto_requeue=False))
    # validation.every_n_steps counts optimizer steps; Lightning's interval counts batches
    every = int(cfg.validation.every_n_steps) * int(cfg.trainer.accumulate_grad_batches)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, strategy=strategy,
                          plugins=plugins, val_check_interval=every, precision=effective_precision(cfg))
    limit = cfg.validation.limit_batches
    if isinstance(limit, int) and not isinstance(limit, bool) and trainer.world_size > 1:
        # validation.limit_batches counts batches of the whole set: ranks split them (the same
        # first limit x batch_size rows on any number of GPUs when limit divides by it)
        trainer.limit_val_batches = math.ceil(limit / trainer.world_size)
    return trainer


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    wanted = {"train/loss": "final/train_loss", "val/loss": "final/val_loss", "val/mse": "final/val_mse",
              "val/scene_colour_agreement": "final/scene_colour_agreement",
              "val/segmenter_miou": "final/segmenter_miou"}
    return {new: float(trainer.callback_metrics[old]) for old, new in wanted.items()
            if old in trainer.callback_metrics}


def hparams_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings people compare runs by, flat, for TensorBoard's HParams tab."""
    return {
        "model": cfg["model"]["name"], "data": cfg["data"]["name"], "size": str(cfg["data"]["size"]),
        "batch_size": cfg["data"]["batch_size"], "lr": cfg["optim"]["lr"],
        "warmup_steps": cfg["optim"]["warmup_steps"], "drop_prob": cfg["guidance"]["drop_prob"],
        "schedule": cfg["diffusion"]["schedule"], "prediction": cfg["diffusion"]["prediction_type"],
        "precision": str(cfg["trainer"]["precision"]), "max_steps": cfg["trainer"]["max_steps"],
        "ema_decay": cfg["ema"]["decay"], "seed": cfg["seed"], "init_from": str(cfg["init_from"]),
    }


def remove_if_empty(run_dir: str | Path) -> None:
    """Delete a run dir that holds nothing but Hydra's config and log and empty folders, so a
    start that failed leaves no run behind to be mistaken for one (or resumed by ckpt_path=last)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    files = [p.relative_to(run_dir) for p in run_dir.rglob("*") if not p.is_dir()]
    if all(p.parts[0] == ".hydra" or (len(p.parts) == 1 and p.suffix == ".log") for p in files):
        shutil.rmtree(run_dir, ignore_errors=True)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit SDM as configured; returns the final metrics (also logged as hparams metrics)."""
    try:
        return _train(cfg)
    except Exception:
        remove_if_empty(cfg.output_dir)
        raise


def _train(cfg: DictConfig) -> dict[str, float]:
    check_train_config(cfg)
    check_accelerator(cfg.trainer)
    if int(cfg.trainer.num_nodes) > 1 and not cfg.run_dir and not _is_multirun():
        raise ConfigError(
            f"trainer.num_nodes={cfg.trainer.num_nodes}: pass run_dir=<a path every node sees> so that all "
            "nodes write to one run dir (each would name its own by the clock), or submit with -m "
            "hydra/launcher=slurm"
        )
    ensure_writable(Path(cfg.output_dir) / CHECKPOINT_DIR)  # a read-only or full run dir: named now
    ckpt_path = resolve_ckpt_path(cfg)
    if cfg.get("stage") == "finetune" and not (cfg.init_from or ckpt_path):
        raise ConfigError(
            "experiment=finetune_cfg needs init_from=<the stage-1 run dir, a .ckpt or an ema.safetensors> "
            "(or ckpt_path=last to resume a fine-tune)"
        )
    if ckpt_path and cfg.init_from:
        print(f"resuming {ckpt_path}: init_from is not used (the checkpoint holds the weights)")
    L.seed_everything(int(cfg.seed), workers=True)
    plain = OmegaConf.to_container(cfg, resolve=True)
    module = SDMModule(plain)
    if cfg.init_from and not ckpt_path:
        start_from_stage_one(module, cfg.init_from, continue_ema=cfg.ema.on_finetune == "continue")
    if ckpt_path:
        check_resumable(ckpt_path, module)
    for folder in (CHECKPOINT_DIR, EXPORT_DIR):
        if (Path(cfg.output_dir) / folder).is_dir():
            for leftover in remove_leftovers(Path(cfg.output_dir) / folder):
                print(f"removed {leftover}: the unfinished write of a killed run")
    module.sample_scorer = validation_scorer(plain)
    trainer = build_trainer(cfg)
    trainer.callbacks.append(SameResumePoint(ckpt_path))
    fit(trainer, module, SidewalkDataModule(cfg.data), ckpt_path)
    metrics = final_metrics(trainer)
    if trainer.is_global_zero:
        if cfg.export:
            path = export_ema(module.ema.module.state_dict(), plain, Path(cfg.output_dir) / EXPORT_DIR)
            write_model_card(path.parent, plain)  # numbers come with the run's first evaluation
            print(f"exported EMA weights to {path} (model card: {path.parent / CARD})")
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams_of(plain), metrics)
            logger.finalize("success")
        print(next_steps(cfg.output_dir, metrics))
    return metrics


def start_from_stage_one(module: SDMModule, source: str, continue_ema: bool) -> None:
    """Initialise a fine-tune. ema.on_finetune=continue (the paper's): the U-Net from stage 1's
    trained weights and the EMA carried on from stage 1's, so the average keeps its 0.9999 memory;
    restart: both from stage 1's EMA, the EMA counting (and warming up) from zero."""
    unet, ema, updates, path = load_stage_one(source, continue_ema)
    load_into(module.unet, unet, str(path))
    load_into(module.ema.module, ema, str(path))
    if continue_ema:
        # > 0: AveragedModel would copy the U-Net over the average at its first update otherwise
        module.ema.n_averaged.fill_(max(1, updates or 0))
        origin = "its trained weights" if unet is not ema else "its EMA (the file holds no other)"
        print(f"initialised the U-Net from {origin} and continued its EMA ({updates or 'unknown'} updates) "
              f"from {path}")
    else:
        print(f"initialised the U-Net and its EMA from {path}")


def fit(trainer: L.Trainer, module: SDMModule, data: SidewalkDataModule, ckpt_path: str | None) -> None:
    """trainer.fit, with the project's errors and stops kept whole under `ddp_spawn`: there the
    ranks are child processes, so this one passes stop signals on to them, and their errors
    come back as tracebacks in text, rebuilt here into the errors (and exit codes) they were."""
    launcher = trainer.strategy.launcher
    spawned = isinstance(launcher, _MultiProcessingLauncher)
    signals = StopSignals(forward_to=lambda: [p.pid for p in getattr(launcher, "procs", []) if p.pid]) \
        if spawned else None
    if signals is not None:
        signals.install()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:  # Lightning's own stop, for a SIGTERM that came before the first step
        raise TrainingStopped("SIGTERM before the first training step: nothing to save", signal.SIGTERM) from None
    except ProcessRaisedException as err:
        error = error_from_worker(str(err))
        if error is None:
            raise
        if isinstance(error, TrainingStopped) and signals is not None:
            signals.hand_on(str(error))  # under submitit: requeue the job, then exit
        raise error from None
    except ProcessExitedException as err:
        code = err.exit_code or 0
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        error = SDMError(f"training process {err.error_index} {how}; continue from the last checkpoint with: "
                         f"python train.py <the same overrides> run_dir={module.cfg['output_dir']} ckpt_path=last")
        error.exit_code = 128 - code if code < 0 else code or 1
        raise error from None
    finally:
        if signals is not None:
            signals.uninstall()


def next_steps(run_dir: str, metrics: dict[str, float]) -> str:
    """What to look at and run after a training run."""
    shown = ", ".join(f"{k.removeprefix('final/')} {v:.4g}" for k, v in metrics.items())
    return (
        f"\nfinished: {shown}\n"
        f"  run dir:     {run_dir}\n"
        f"  TensorBoard: tensorboard --logdir {run_dir}\n"
        f"  samples:     python sample.py weights={run_dir}\n"
        f"  resume:      python train.py <the same overrides> run_dir={run_dir} ckpt_path=last"
    )
