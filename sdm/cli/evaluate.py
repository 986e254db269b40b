"""`sdm-evaluate samples=<sample.py folder>` or `images=<dir> labels=<dir> [real=<dir>]` (conf/evaluate.yaml):
score generated images and write the report (JSON, text, HTML, TensorBoard)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from sdm.core.configs import CONFIG_DIR
from sdm.core.exits import exit_on_sdm_error
from sdm.metrics.evaluation import evaluate


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
@exit_on_sdm_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
