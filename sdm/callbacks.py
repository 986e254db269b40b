"""Lightning callbacks of the project."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from sdm.checkpoints import save_checkpoint_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through the project's atomic save (no half-written files)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        save_checkpoint_file(checkpoint, Path(path))


class PeriodicCheckpoint(ModelCheckpoint):
    """Every-N-steps checkpoints plus `last.ckpt`, and one more when training ends.

    Lightning saves only on multiples of N; the final state matters as much (it is what
    `ckpt_path=last` and the export should see), so it is written too.
    """

    _flush_pending = False

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

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self._last_global_step_saved != trainer.global_step and trainer.global_step > 0:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
