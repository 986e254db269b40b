"""Test hooks for train.py in a fresh interpreter: put this folder on PYTHONPATH and Python
imports it at start-up, in every process (the DDP ranks Lightning starts too). Set by
environment variables:

- SDM_TEST_DIE=SIGNAL:STEP[:parent] - rank 0 sends SIGNAL at the end of optimizer step STEP, as a
  scheduler would (SIGTERM, SIGUSR2), to itself or, with `:parent`, to its parent process (the
  `ddp_spawn` launcher, which `kill <pid>` reaches); SIGKILL goes to the whole process group
  (every rank and DataLoader worker), as a node failure would, and SIGINT too, as Ctrl-C in a
  terminal does.
- SDM_TEST_FAIL_WRITE=STEP - rank 0's checkpoint write of step STEP fails as on a full disk.
- SDM_TEST_DUMP_EMA=1 - each rank saves its EMA weights to <run dir>/ema-rank<r>.pt at the end.
"""

import os
import signal
import time
from pathlib import Path

if os.environ.get("SDM_TEST_DIE"):
    from sdm.training import callbacks

    name, step, *target = os.environ["SDM_TEST_DIE"].split(":")
    signum, step = getattr(signal, name), int(step)
    original = callbacks.PeriodicCheckpoint.on_train_batch_end

    launcher = os.getppid()  # for a spawned rank: the process that started it

    def then_die(self, trainer, *args, **kwargs):
        original(self, trainer, *args, **kwargs)
        if trainer.global_step == step and trainer.is_global_zero:
            if signum in (signal.SIGKILL, signal.SIGINT):
                os.killpg(os.getpgid(0), signum)
                return
            if target != ["parent"]:
                os.kill(os.getpid(), signum)
                return
            if os.getppid() != launcher:
                return  # orphaned (its launcher died): never signal whatever adopted it (init)
            os.kill(launcher, signum)
            # wait until the launcher has passed it on, so that every run stops after the next
            # step, however loaded the machine: the test's step count does not depend on timing
            deadline = time.monotonic() + 60
            while self._signals.received is None and time.monotonic() < deadline:
                time.sleep(0.01)

    callbacks.PeriodicCheckpoint.on_train_batch_end = then_die

if os.environ.get("SDM_TEST_FAIL_WRITE"):
    import errno

    from sdm.core.atomic import WriteError, describe_write_failure
    from sdm.training import callbacks

    failing_step = int(os.environ["SDM_TEST_FAIL_WRITE"])
    save = callbacks.AtomicCheckpointIO.save_checkpoint

    def fails_at_step(self, checkpoint, path, storage_options=None):
        if checkpoint.get("global_step") == failing_step:
            raise WriteError(describe_write_failure(Path(path), OSError(errno.ENOSPC, "No space left on device")))
        save(self, checkpoint, path, storage_options)

    callbacks.AtomicCheckpointIO.save_checkpoint = fails_at_step

if os.environ.get("SDM_TEST_DUMP_EMA"):
    import torch

    from sdm.training.module import SDMModule

    def dump_ema(self):
        path = Path(self.cfg["output_dir"]) / f"ema-rank{self.global_rank}.pt"
        torch.save(self.ema.module.state_dict(), path)

    SDMModule.on_train_end = dump_ema
