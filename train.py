"""Train SDM: `python train.py experiment=quickstart` (see README and conf/train.yaml)."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from sdm.errors import exit_on_sdm_error  # noqa: E402
from sdm.slurm_launcher import install_checks  # noqa: E402
from sdm.training import register_resolvers, train  # noqa: E402

register_resolvers()

install_checks()  # hydra/launcher=slurm refuses a misconfigured sweep before submitting it


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_sdm_error
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("final/val_loss")  # the value a Hydra sweeper would optimise


if __name__ == "__main__":
    main()
