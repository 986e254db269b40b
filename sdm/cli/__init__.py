"""The commands, one module each, as console scripts (`sdm-train`, `sdm-sample`, ...) and `python -m sdm.cli.<name>`."""

import sys
from pathlib import Path

from sdm.core.exits import quiet_ctrl_c_while_starting

# started as a command (python -m sdm.cli.<name>, the sdm-<name> scripts, train.py and sample.py), not
# imported by a program or a test: Ctrl-C in the seconds of imports is one line too
if sys.argv[:1] == ["-m"] or Path(sys.argv[0]).name.startswith("sdm-") or Path(sys.argv[0]).name in (
        "train.py", "sample.py"):
    quiet_ctrl_c_while_starting()
