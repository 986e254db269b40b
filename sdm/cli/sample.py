"""`sdm-sample weights=runs/<run>` (or `python sample.py ...`; conf/sample.yaml): generate images for
masks, then optionally export them as a dataset and evaluate them."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from sdm.cluster.launcher import install_checks
from sdm.core.configs import CONFIG_DIR
from sdm.core.exits import exit_on_sdm_error
from sdm.generation import generate
from sdm.generation.filtering import PixelFilter

install_checks()  # hydra/launcher=slurm refuses a misconfigured sweep before submitting it


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="sample")
@exit_on_sdm_error
def main(cfg: DictConfig) -> None:
    pixel_filter = None
    if cfg.export and cfg.export_filter:  # a bad tolerance is refused before any image is made
        pixel_filter = PixelFilter(str(cfg.export_filter), cfg.export_tolerance)
    manifest = generate(cfg)
    if (cfg.evaluate or cfg.export) and not manifest.get("complete"):
        print("evaluate/export: the other shards are still running; the last one to finish does it")
        return
    # imported here, not at the top: a sampling job (one per GPU or shard) starts without Lightning and
    # the metric networks, which only the evaluation needs
    if cfg.export:
        from sdm.generation.export import export_dataset

        size = tuple(int(v) for v in cfg.export_size) if cfg.export_size else None
        export_dataset(manifest["out_dir"], cfg.export_dir, size=size, setting="export_dir", pixel_filter=pixel_filter)
    if cfg.evaluate:
        from sdm.metrics.evaluation import evaluate_set
        from sdm.metrics.image_sets import from_sample_folder

        out_dir = Path(manifest["out_dir"])
        evaluate_set(from_sample_folder(out_dir), out_dir, cfg.evaluation)  # read with the run's class table


if __name__ == "__main__":
    main()
