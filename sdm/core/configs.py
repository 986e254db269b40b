"""Where the Hydra configs are, and one way to compose them outside a command (tests, studies, the pipeline).

`sdm/conf` links to the repository's top-level `conf/` and is shipped inside the wheel, so a
clone, an editable install and a plain `pip install` all read the same files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(config_name: str, overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The config `config_name` (train, sample, evaluate, prepare, segmenter) with command-line
    overrides, as the command would compose it (Hydra's own settings only when asked)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
