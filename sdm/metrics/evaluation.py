"""An evaluation from start to end: read the set, find the networks, score, write the report.

`python -m sdm.cli.evaluate samples=<sample.py folder>` or `images=<dir> labels=<dir> [real=<dir>]`,
and `python sample.py ... evaluate=true` after a generation (conf/evaluate.yaml,
conf/evaluation/default.yaml).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from sdm.checkpoint.card import SAMPLES, write_model_card
from sdm.checkpoint.files import EXPORT_CONFIG
from sdm.core.atomic import WriteError, remove_leftovers, temporary_name, write_json
from sdm.core.errors import ConfigError
from sdm.core.hardware import resolve_device
from sdm.core.places import check_output_folder
from sdm.core.viz import save_png
from sdm.data.prepare import prepare_data
from sdm.data.sources import SOURCES
from sdm.metrics.image_sets import ImageSet, from_folders, from_sample_folder
from sdm.metrics.pictures import calibration_grid, ranked_masks, ranking_grid
from sdm.metrics.report import (
    HTML_FILE,
    JSON_FILE,
    PICTURES_DIR,
    TEXT_FILE,
    history,
    library_versions,
    log_to_tensorboard,
    text_report,
    write_text,
)
from sdm.metrics.report_html import page
from sdm.metrics.scoring import Calibration, Networks, score_set
from sdm.metrics.weights import missing_message, use_weights_dir
from sdm.segmenter.cache import cache_folder, default_segmenter_settings, load_segmenter
from sdm.segmenter.fit import train_segmenter

RANKED = 4  # masks shown in each of the best and worst grids


def cached_segmenter_folder(train_data: dict[str, Any]) -> Path:
    """Where the default segmenter of a run's data lives (trained or not)."""
    prepared = prepare_data(OmegaConf.create(train_data), show_progress=False)
    return cache_folder(prepared.root.name, default_segmenter_settings())


def find_segmenter(spec: str, image_set: ImageSet, train: bool, notes: list[str]) -> Path | None:
    """The segmenter folder to use: a given path, or for `auto` the cached one of the run's data
    (trained first when `train` and there is none yet)."""
    if spec == "none":
        notes.append("semantic consistency skipped: evaluation.segmenter=none")
        return None
    if spec != "auto":
        return Path(spec).expanduser()
    if image_set.train_data is None:
        notes.append("semantic consistency skipped: these folders do not say which data trained their model; "
                     "pass evaluation.segmenter=<folder> (python -m sdm.cli.segmenter data=...)")
        return None
    if image_set.train_data.get("name") not in SOURCES:  # e.g. a model converted from the official code
        notes.append(f"semantic consistency skipped: the model was trained on data.name="
                     f"{image_set.train_data.get('name')}, which this project cannot prepare to train a segmenter "
                     "on; pass evaluation.segmenter=<folder of a segmenter of that data>")
        return None
    if str(image_set.train_data.get("path")) == "???":  # a converted official checkpoint, sampled from a folder
        notes.append("semantic consistency skipped: the model's data names no path (a converted official "
                     "checkpoint); sample with mask_source={path:<its dataset>} so the evaluation can train a "
                     "segmenter there, or pass evaluation.segmenter=<folder>")
        return None
    folder = cached_segmenter_folder(image_set.train_data)
    if (folder / "segmenter.json").is_file():
        return folder
    if not train:
        notes.append(f"semantic consistency skipped: no segmenter cached at {folder}; run python -m "
                     "sdm.segmenter.fit with the run's data, or pass evaluation.train_segmenter=true")
        return None

    print(f"no segmenter for this data yet: training the default one (once per dataset and size) -> {folder}")
    cfg = OmegaConf.create({"data": image_set.train_data, "seed": 0, "output_dir": str(folder / "train"),
                            "segmenter": default_segmenter_settings()})
    return train_segmenter(cfg)


def load_networks(ecfg: DictConfig, image_set: ImageSet) -> tuple[Networks, dict[str, Any]]:
    """The metric networks the settings and the weights on disk allow, and what was used."""
    nets = Networks()
    use_weights_dir(ecfg.weights_dir)
    folder = find_segmenter(str(ecfg.segmenter), image_set, bool(ecfg.train_segmenter), nets.notes)
    used: dict[str, Any] = {}
    if folder is not None:
        nets.segmenter, nets.segmenter_info = load_segmenter(folder)
        used = {"folder": str(folder), **{k: v for k, v in nets.segmenter_info.items()
                                          if k in ("arch", "width", "data_key", "size", "steps", "real_val_miou")}}
        trained_size = tuple(nets.segmenter_info.get("size", image_set.size))
        if trained_size != image_set.size:
            nets.notes.append(f"the segmenter was trained at {trained_size[0]}x{trained_size[1]} and the set is "
                              f"{image_set.size[0]}x{image_set.size[1]}: its scores are less reliable")
    if ecfg.fid:
        message = missing_message("inception", ecfg.weights_dir)
        if message:
            nets.notes.append(message)
        else:
            nets.inception = int(ecfg.fid_features)
    if ecfg.lpips:
        message = missing_message("alexnet", ecfg.weights_dir)
        if message:
            nets.notes.append(message)
        else:
            import lpips

            nets.lpips = lpips.LPIPS(net="alex", verbose=False)
    return nets, used


def classes_of(cfg: DictConfig) -> int | None:
    """num_classes= (a generic table of that many, or sidewalk's for 35), else None: a samples=
    folder is read with its run's class table (a converted official ADE20K model has 151)."""
    return None if cfg.num_classes is None else int(cfg.num_classes)


def open_set(cfg: DictConfig) -> tuple[ImageSet, Path]:
    """The image set named by samples= or images=/labels=, and the folder the report goes to."""
    num_classes = classes_of(cfg)
    if cfg.samples:
        if cfg.images or cfg.labels:
            raise ConfigError("pass either samples=<sample.py folder> or images=<dir> labels=<dir>, not both")
        image_set = from_sample_folder(str(cfg.samples), num_classes)
        return image_set, Path(str(cfg.out_dir)) if cfg.out_dir else image_set.root
    if not (cfg.images and cfg.labels):
        raise ConfigError("nothing to evaluate: pass samples=<a sample.py output folder>, or images=<dir> "
                          "labels=<dir> [real=<dir>] (label PNGs named like the images, <mask>[_<k>].png)")
    image_set = from_folders(str(cfg.images), str(cfg.labels), cfg.real, num_classes)
    return image_set, Path(str(cfg.out_dir)) if cfg.out_dir else image_set.root


def calibration_settings(ecfg: DictConfig) -> Calibration:
    """The blur control and the bounds of a reliable instrument (evaluation.calibration.*)."""
    settings = dict(ecfg.get("calibration") or {})
    known = set(Calibration.__dataclass_fields__)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"evaluation.calibration.{unknown[0]} is not a setting: expected {sorted(known)}")
    calibration = Calibration(**settings)
    if not isinstance(calibration.blur_factor, int) or calibration.blur_factor < 2:
        raise ConfigError(f"evaluation.calibration.blur_factor={calibration.blur_factor} is invalid: expected an "
                          "integer >= 2 (the photo is resized down by it and back up)")
    for key in ("min_ceiling", "max_blur_ratio"):
        value = getattr(calibration, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ConfigError(f"evaluation.calibration.{key}={value} is invalid: expected a number in [0, 1]")
    return calibration


def evaluate_set(image_set: ImageSet, out_dir: Path, ecfg: DictConfig, num_classes: int | None = None,
                 nets: Networks | None = None) -> dict[str, Any]:
    """Score a set and write evaluation.json, evaluation_report.txt, evaluation.html (+ pictures).

    `nets` replaces the networks the settings would load (tests inject small ones).
    """
    started = time.perf_counter()
    calibration = calibration_settings(ecfg)  # checked before any network is loaded or trained
    out_dir = check_output_folder(out_dir, "out_dir")  # and the places it writes: before the work
    logdir = tensorboard_folder(image_set, out_dir) if ecfg.tensorboard else None
    if logdir is not None:
        check_output_folder(logdir, "evaluation.tensorboard (its folder)")
    device = resolve_device(str(ecfg.device))
    segmenter_used: dict[str, Any] = {"folder": "injected"} if nets is not None else {}
    if nets is None:
        nets, segmenter_used = load_networks(ecfg, image_set)
    scores = score_set(image_set, nets, num_classes=num_classes,
                       images_per_batch=int(ecfg.batch_size), device=device,
                       kid_subset_size=int(ecfg.kid_subset_size), progress=bool(ecfg.progress),
                       calibration=calibration)
    report = {
        **scores,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "set": {"root": str(image_set.root), "kind": image_set.kind, "size": list(image_set.size)},
        "settings": image_set.settings,
        "weights": image_set.weights,
        "train_data": image_set.train_data,
        "classes": image_set.table.summary(),
        "segmenter": segmenter_used,
        "evaluation": OmegaConf.to_container(ecfg, resolve=True),
        "device": str(device),
        "versions": library_versions(),
        "files": {"json": str(out_dir / JSON_FILE), "text": str(out_dir / TEXT_FILE),
                  "html": str(out_dir / HTML_FILE), "pictures": {}},
    }
    with staged_outputs(out_dir) as stage:
        report["files"]["pictures"] = pictures = write_pictures(image_set, nets, calibration, report, stage, device)
        report["seconds"] = round(time.perf_counter() - started, 2)
        write_text(stage / HTML_FILE, page(report, pictures, history(report, image_set.run_dir, out_dir)))
        text = text_report(report)
        write_text(stage / TEXT_FILE, text)
        if logdir is not None:
            log_to_tensorboard(report, logdir)
            report["files"]["tensorboard"] = str(logdir)
        write_json(stage / JSON_FILE, report)  # moved into place last: its presence means the rest is there
    refresh_model_card(report, out_dir)
    print(text, end="")
    return report


def refresh_model_card(report: dict[str, Any], out_dir: Path) -> None:
    """The evaluated weights' model card, with these numbers and a picture of the samples: an
    export's README.md says what its newest evaluation measured."""
    weights = Path(str((report.get("weights") or {}).get("file") or ""))
    export = weights.parent
    if not weights.name or not (export / EXPORT_CONFIG).is_file() or not report.get("metrics"):
        return
    try:
        pictures = report["files"]["pictures"]
        shown = next((pictures[k] for k in pictures if "blur control" in k), None) or next(iter(pictures.values()), None)
        if shown:
            shutil.copyfile(out_dir / shown, export / SAMPLES)
        write_model_card(export, yaml.safe_load((export / EXPORT_CONFIG).read_text()), report)
    except OSError as err:  # a read-only export: the report stands, the card stays as it was
        print(f"note: the model card in {export} was not refreshed: {err}")


def tensorboard_folder(image_set: ImageSet, out_dir: Path) -> Path:
    """The run's TensorBoard (so evaluations sit beside the training curves), else one beside the report."""
    if image_set.run_dir is not None and image_set.run_dir.is_dir():
        return image_set.run_dir.absolute() / "tb" / f"eval-{out_dir.name}"
    return out_dir / PICTURES_DIR / "tb"


def write_pictures(image_set: ImageSet, nets: Networks, calibration: Calibration, report: dict[str, Any],
                   folder: Path, device: Any) -> dict[str, str]:
    """The best and worst masks and the calibration grid, as PNGs under `folder`; caption -> file."""
    pictures = {}
    best, worst = ranked_masks(report["per_mask"], RANKED)
    for caption, name, indices in (("best masks", "best.png", best), ("worst masks", "worst.png", worst)):
        if indices:
            save_png(ranking_grid(image_set, indices, nets.segmenter, device), folder / PICTURES_DIR / name)
            pictures[caption] = f"{PICTURES_DIR}/{name}"
    with_photos = [i for i, entry in enumerate(image_set.entries) if entry.real is not None][:RANKED]
    shown = calibration_grid(image_set, with_photos, calibration.blur_factor)
    if shown is not None and nets.segmenter is not None:
        save_png(shown, folder / PICTURES_DIR / "calibration.png")
        pictures["blur control | generated | real (the ratio's scale)"] = f"{PICTURES_DIR}/calibration.png"
    return pictures


@contextlib.contextmanager
def staged_outputs(out_dir: Path) -> Iterator[Path]:
    """A hidden folder beside the report for all its files, moved into `out_dir` only when every
    one is written (renames need no room): a full disk leaves the previous report whole, never
    new pictures beside an old or missing evaluation.json."""
    for leftover in remove_leftovers(out_dir, "partial", "evaluation") if out_dir.is_dir() else []:
        print(f"removed {leftover}: the unfinished report of a killed evaluation")
    stage = temporary_name(out_dir / "evaluation", "partial")
    try:
        yield stage
        files = sorted((p for p in stage.rglob("*") if p.is_file()), key=lambda p: p.name == JSON_FILE)
        for path in files:
            target = out_dir / path.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    except WriteError as err:
        raise WriteError(f"the evaluation could not be written to {out_dir}: {err}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """The `python -m sdm.cli.evaluate` job (conf/evaluate.yaml)."""
    image_set, out_dir = open_set(cfg)
    return evaluate_set(image_set, out_dir, cfg.evaluation, classes_of(cfg))
