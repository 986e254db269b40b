"""Score generated images: `python -m sdm.evaluate samples=<sample.py folder>` (conf/evaluate.yaml)."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from sdm.errors import exit_on_sdm_error  # noqa: E402
from sdm.metrics.evaluation import evaluate  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@exit_on_sdm_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
