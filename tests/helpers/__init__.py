"""What the tests share: paths, configs, data rows, processes, evaluation sets, runs."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
