"""Lightning callbacks of the project."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from sdm.checkpoint.files import load_checkpoint, save_checkpoint_file
from sdm.core.errors import CheckpointError
from sdm.core.stopping import StopSignals, TrainingStopped


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through the project's atomic save (no half-written files)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        save_checkpoint_file(checkpoint, Path(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(Path(path))  # digest checked, code refused: the project's own loader


class PeriodicCheckpoint(ModelCheckpoint):
    """Every-N-steps checkpoints plus `last.ckpt`, one more when training ends, and one when a
    stop signal arrives (sdm.core.stopping), after which training stops with a resume hint.

    Lightning saves only on multiples of N; the final state matters as much (it is what
    `ckpt_path=last` and the export should see), so it is written too.
    """

    _flush_pending = False
    _signals: StopSignals | None = None
    _step_seen = -1
    stop_signum: int | None = None
    stop_message = ""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._signals = StopSignals()
        self._signals.install()
        self._step_seen = trainer.global_step

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self._flush_pending = True

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        # Lightning hands a step's losses to the loggers after its checkpoint is written: flush
        # them at the next step, so that a crash later loses no logged step the checkpoint holds
        # (only a kill in the instant between the two writes can).
        if self._flush_pending:
            self._flush_pending = False
            for logger in trainer.loggers:
                logger.save()
        if self.stop_signum is not None:
            if trainer.is_global_zero and self._signals is not None:
                self._signals.hand_on(self.stop_message)  # under submitit: requeue the job, then exit
            raise TrainingStopped(self.stop_message, self.stop_signum)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if trainer.global_step == self._step_seen:
            return  # mid gradient accumulation: only an optimizer step is a state to resume from
        self._step_seen = trainer.global_step
        received = self._signals.received if self._signals else None
        if received is None and trainer.received_sigterm:  # came before training started
            received = signal.SIGTERM
        # every rank stops at the same step: checkpoint writing waits for all of them
        if not trainer.strategy.reduce_boolean_decision(received is not None, all=False):
            return
        self._save_on_stop(trainer)
        # a stop has KillWait seconds (SLURM's default 30) before SIGKILL: no validation first
        trainer.fit_loop.epoch_loop._skip_next_val = True
        name = signal.Signals(received).name if received else "SIGTERM (or another stop signal) on another rank"
        self.stop_signum = received or signal.SIGTERM
        self.stop_message = (
            f"{name} after step {trainer.global_step}: the run's state is in {self.last_model_path}. Continue it "
            f"with: python train.py <the same overrides> run_dir={Path(self.last_model_path).parent.parent} "
            "ckpt_path=last"
        )
        # raised when the next step starts: Lightning logs this step's losses after this hook

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if self._signals is not None:
            self._signals.uninstall()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_final(trainer)

    def _save_on_stop(self, trainer: L.Trainer) -> None:
        """One write, last.ckpt: a stop has seconds, and a step=N file would be a second full copy."""
        if self._last_global_step_saved == trainer.global_step:
            return  # this step's periodic checkpoint was just written
        candidates = self._monitor_candidates(trainer)
        if self.save_last:
            self._save_last_checkpoint(trainer, candidates)
        else:
            self._save_topk_checkpoint(trainer, candidates)

    def _save_final(self, trainer: L.Trainer) -> None:
        if self._last_global_step_saved != trainer.global_step and trainer.global_step > 0:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


class SameResumePoint(L.Callback):
    """Every rank must resume from the checkpoint rank 0 resumes from. Each rank picks its own
    before the ranks can talk (sdm.training.fit.resolve_ckpt_path); the pick is a function of the
    files, so ranks differ only when nodes see the run dir differently: then all stop, saying so,
    instead of training on from different states."""

    def __init__(self, ckpt_path: str | None) -> None:
        self.ckpt_path = ckpt_path or ""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.world_size < 2:
            return
        chosen = trainer.strategy.broadcast(self.ckpt_path, src=0)
        if trainer.strategy.reduce_boolean_decision(chosen != self.ckpt_path, all=False):
            raise CheckpointError(
                f"rank {trainer.global_rank} would resume from {self.ckpt_path or 'nothing (a fresh start)'} but "
                f"rank 0 from {chosen or 'nothing (a fresh start)'}: the nodes do not see the same run dir. Put "
                "run_dir on a file system that every node shares, and check that its checkpoints are complete"
            )
