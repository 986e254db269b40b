"""`python -m sdm.app [weights=runs/<run>] [port=7860]` (sdm-app; conf/app.yaml): the interactive page,
by default for the model that `make demo` trains."""

from __future__ import annotations

import tempfile
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from sdm.core.configs import CONFIG_DIR
from sdm.core.errors import ConfigError, SDMError
from sdm.core.exits import exit_on_sdm_error
from sdm.core.hardware import resolve_device


def page_of(cfg: DictConfig):
    """The page for cfg.weights, with up to cfg.masks validation masks of its run's data in the picker."""
    try:
        from sdm.app.page import build_page
    except ModuleNotFoundError as err:
        if err.name != "gradio":
            raise
        raise ConfigError("the page needs Gradio: pip install 'sdm[app]' (or pip install gradio)") from None
    from sdm.generation.masks import val_masks
    from sdm.generation.weights import load_model
    from sdm.pipelines.save import pipeline_from_weights

    weights = Path(str(cfg.weights)).expanduser()
    if not weights.exists():
        raise ConfigError(f"weights={cfg.weights}: nothing there; run `make demo` first (it trains runs/demo/train) "
                          "or pass weights=<run dir | export dir | .ckpt | .safetensors>")
    model = load_model(weights)
    pipe = pipeline_from_weights(model, cfg.sampler).to(resolve_device(str(cfg.device)))
    masks: dict[str, np.ndarray] = {}
    if int(cfg.masks) > 0:
        try:
            masks = {m.name: m.label for m in val_masks(model.cfg, int(cfg.masks))}
        except SDMError as err:  # a converted checkpoint without its dataset, a streamed set: upload or paint
            print(f"no validation masks in the picker ({err}); upload a label map or paint one")
    work_dir = Path(str(cfg.work_dir)).expanduser() if cfg.work_dir else Path(tempfile.mkdtemp(prefix="sdm-app-"))
    title = f"SDM: {model.cfg.get('run_name') or weights.name}"
    return build_page(pipe, masks, work_dir, title=title)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="app")
@exit_on_sdm_error
def main(cfg: DictConfig) -> None:
    page = page_of(cfg)
    page.queue().launch(server_name=str(cfg.host), server_port=None if cfg.port is None else int(cfg.port),
                        share=bool(cfg.share), inbrowser=False)


if __name__ == "__main__":
    main()
