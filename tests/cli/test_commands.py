"""What the commands load at start: a sampling job (one per GPU or shard) starts without Lightning."""

from __future__ import annotations

import subprocess
import sys


def test_a_sampling_job_starts_without_lightning_and_the_training_command_with_it():
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print(any(m.split('.')[0] == 'lightning' for m in sys.modules))")
    loaded = {name: subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True,
                                   check=True).stdout.strip() for name in ("sdm.cli.sample", "sdm.cli.train")}
    assert loaded == {"sdm.cli.sample": "False", "sdm.cli.train": "True"}
