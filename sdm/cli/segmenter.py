"""`sdm-segmenter data=scenes|sidewalk [segmenter.arch=unet|small|lraspp|deeplabv3]` (conf/segmenter.yaml):
train the consistency segmenter of a dataset, or reuse the cached one, and with `segmenter.test`
score it on a held-out real test set."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from sdm.core.configs import CONFIG_DIR
from sdm.core.exits import exit_on_sdm_error
from sdm.data.prepare import prepare_data
from sdm.segmenter.cache import INFO_FILE, starting_weights
from sdm.segmenter.fit import train_segmenter
from sdm.segmenter.held_out import refuse_training_rows, score_held_out, test_data_cfg


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="segmenter")
@exit_on_sdm_error
def main(cfg: DictConfig) -> None:
    # a starting segmenter that does not fit stops the run before the test set is prepared
    starting_weights(OmegaConf.to_container(cfg.segmenter, resolve=True), int(cfg.data.num_classes))
    test = cfg.segmenter.get("test")
    if test:  # a bad or not held-out test set stops the run before any training
        test = OmegaConf.to_container(test, resolve=True) if OmegaConf.is_config(test) else test
        test_key = prepare_data(test_data_cfg(cfg.data, test), show_progress=False).root.name
        refuse_training_rows(test, test_key, prepare_data(cfg.data, show_progress=False).root.name)
    folder = train_segmenter(cfg)
    if test:
        score_held_out(folder, cfg.data, test, INFO_FILE)


if __name__ == "__main__":
    main()
