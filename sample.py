"""Generate images from masks: `python sample.py weights=runs/quickstart/<date>` (conf/sample.yaml)."""

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from sdm.errors import exit_on_sdm_error  # noqa: E402
from sdm.generation import generate  # noqa: E402
from sdm.slurm_launcher import install_checks  # noqa: E402

install_checks()  # hydra/launcher=slurm refuses a misconfigured sweep before submitting it


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
@exit_on_sdm_error
def main(cfg: DictConfig) -> None:
    manifest = generate(cfg)
    if (cfg.evaluate or cfg.export) and not manifest.get("complete"):
        print("evaluate/export: the other shards are still running; the last one to finish does it")
        return
    if cfg.export:
        from sdm.generation.export import export_dataset

        size = tuple(int(v) for v in cfg.export_size) if cfg.export_size else None
        export_dataset(manifest["out_dir"], cfg.export_dir, size=size)
    if cfg.evaluate:
        from sdm.metrics.evaluation import evaluate_set
        from sdm.metrics.image_sets import from_sample_folder

        out_dir = Path(manifest["out_dir"])
        num_classes = int(manifest["train_data"]["num_classes"])  # the model's, not sidewalk's 35
        evaluate_set(from_sample_folder(out_dir, num_classes), out_dir, cfg.evaluation, num_classes)


if __name__ == "__main__":
    main()
