"""Where the Hydra configs are, and one way to compose them outside a command (tests, studies, the pipeline).

`sdm/conf` links to the repository's top-level `conf/` and is shipped inside the wheel, so a
clone, an editable install and a plain `pip install` all read the same files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sdm.core.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


def count_classes(classes: Any) -> int:
    """The label channels a class table gives (`data.num_classes: ${sdm.num_classes:${.classes}}`):
    its names, or its count where it lists none."""
    names = classes.get("names") if classes is not None else None
    if names is not None:
        return len(names)
    count = classes.get("count") if classes is not None else None
    if not isinstance(count, int):
        raise ConfigError(f"the class table names no classes and gives no count (count={count!r}): set "
                          f"data.classes.count or data.classes.names")
    return count


# registered wherever a config can be composed or a saved one read: every command imports this module
OmegaConf.register_new_resolver("sdm.num_classes", count_classes, replace=True)


def compose(config_name: str, overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The config `config_name` (train, sample, evaluate, prepare, segmenter) with command-line
    overrides, as the command would compose it (Hydra's own settings only when asked). A bad
    override is a ConfigError of one line, not Hydra's exception."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    except HydraException as err:
        raise ConfigError(one_line(str(err))) from None


def one_line(hydra_message: str) -> str:
    """Hydra's multi-line composition error as one line: its first, and the options it lists
    (not its search path, nor its advice to append a key with `+`, which a typo does not want)."""
    lines = hydra_message.split("Config search path:")[0].splitlines()
    options = [line.strip() for line in lines if line.startswith("\t")]
    first = next((line for line in lines if line.strip()), "the overrides cannot be composed")
    if first.startswith("Could not override"):
        first += " It is not a setting of this config: check its spelling"
    return first + (f" (available: {', '.join(options)})" if options else "")
