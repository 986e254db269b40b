"""`sdm-prepare data=scenes|sidewalk [data.size=[H,W]]` (conf/prepare.yaml): download or generate,
validate every row, resize once and cache a dataset, with its statistics and preview pictures."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from sdm.core.configs import CONFIG_DIR
from sdm.core.exits import exit_on_sdm_error
from sdm.data.prepare import describe, prepare_data


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="prepare")
@exit_on_sdm_error
def main(cfg: DictConfig) -> None:
    print(describe(prepare_data(cfg.data)))


if __name__ == "__main__":
    main()
