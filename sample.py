"""Generate images from masks: `python sample.py weights=runs/quickstart/<date>` (conf/sample.yaml)."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from sdm.errors import exit_on_sdm_error  # noqa: E402
from sdm.generate import generate  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
@exit_on_sdm_error
def main(cfg: DictConfig) -> None:
    generate(cfg)


if __name__ == "__main__":
    main()
