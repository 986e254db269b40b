"""`sdm-train experiment=quickstart` (or `python train.py ...`; conf/train.yaml): train SDM, one run or a
Hydra sweep, on one device, many GPUs or a SLURM cluster."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from sdm.cluster.launcher import install_checks
from sdm.core.configs import CONFIG_DIR
from sdm.core.exits import exit_on_sdm_error
from sdm.training.fit import register_resolvers, train

register_resolvers()
install_checks()  # hydra/launcher=slurm refuses a misconfigured sweep before submitting it


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@exit_on_sdm_error
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("final/val_loss")  # the value a Hydra sweeper would optimise


if __name__ == "__main__":
    main()
