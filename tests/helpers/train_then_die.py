"""`python tests/helpers/train_then_die.py SIGNAL STEP <train.py overrides>`: train.py, but the
process sends itself SIGNAL at the end of optimizer step STEP, as a node failure (SIGKILL) or
a scheduler (SIGTERM, SIGUSR2) would."""

import os
import runpy
import signal
import sys
from pathlib import Path

from sdm import callbacks

REPO = Path(__file__).resolve().parents[2]
signum = getattr(signal, sys.argv.pop(1))
step = int(sys.argv.pop(1))
original = callbacks.PeriodicCheckpoint.on_train_batch_end


def then_die(self, trainer, *args, **kwargs):
    original(self, trainer, *args, **kwargs)
    if trainer.global_step == step and trainer.is_global_zero:
        os.kill(os.getpid(), signum)


callbacks.PeriodicCheckpoint.on_train_batch_end = then_die
sys.argv[0] = str(REPO / "train.py")
sys.path.insert(0, str(REPO))
runpy.run_path(str(REPO / "train.py"), run_name="__main__")
