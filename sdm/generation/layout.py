"""Where a generation writes: the output folder, file names, the seeds and the manifest that
records them, the settings a resumed run must match, and the mask files beside the samples."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sdm.checkpoint.files import CHECKPOINT_DIR, EXPORT_DIR
from sdm.core.errors import ConfigError
from sdm.core.seeding import stable_seed
from sdm.core.viz import image_problem, save_png
from sdm.data.classes import SIDEWALK, ClassTable
from sdm.generation.masks import SPLITS, Mask, mask_source, mask_variations
from sdm.generation.weights import Model

MANIFEST = "manifest.json"
SHARDS_DIR = "shards"  # one record per shard of a sharded generation
FOLDERS = ("images", "labels", "colored_masks", "real", "grids")


def run_dir_of(weights_file: Path) -> Path | None:
    """The training run a weights file belongs to (<run>/export/... or <run>/checkpoints/...)."""
    return weights_file.parent.parent if weights_file.parent.name in (EXPORT_DIR, CHECKPOINT_DIR) else None


def default_out_dir(cfg: DictConfig, weights_file: Path) -> Path:
    """<run>/samples/<sampler>-s<scale>-n<steps>[...]: re-running the same command resumes."""
    s = cfg.sampler
    name = f"{s.name}-s{float(s.guidance_scale):g}-n{int(s.num_steps)}"
    if s.name == "ddim" and float(s.eta) != 0:
        name += f"-eta{float(s.eta):g}"
    if int(cfg.seed) != 0:
        name += f"-seed{int(cfg.seed)}"
    if str(cfg.masks) != "val":
        name += f"-{Path(str(cfg.masks)).expanduser().resolve().name}"
    if mask_source(cfg):
        name += f"-source{stable_seed(json.dumps(mask_source(cfg), sort_keys=True)) % 10**6:06d}"
    name += "".join(f"-{v}" for v in mask_variations(cfg))
    run_dir = run_dir_of(weights_file)
    if run_dir is None:
        return Path(str(cfg.output_root)) / "samples" / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return run_dir / "samples" / name


def image_name(mask: str, k: int) -> str:
    return f"{mask}_{k}.png"


def run_settings(cfg: DictConfig, model: Model) -> dict[str, Any]:
    """What decides the pixels: a resumed generation must match these exactly."""
    masks = str(cfg.masks)
    return {
        "weights_fingerprint": model.fingerprint,
        "sampler": {
            "name": str(cfg.sampler.name),
            "num_steps": int(cfg.sampler.num_steps),
            "guidance_scale": float(cfg.sampler.guidance_scale),
            "eta": float(cfg.sampler.eta),
            "timestep_spacing": str(cfg.sampler.timestep_spacing),
        },
        "seed": int(cfg.seed),
        "precision": str(cfg.precision),
        "masks": masks if masks in SPLITS else str(Path(masks).expanduser().resolve()),
        "mask_source": mask_source(cfg),
        "mask_variation": mask_variations(cfg),
        "size": list(model.size),
        "hardness": OmegaConf.to_container(cfg.hardness, resolve=True) if cfg.get("hardness") else None,
    }


def recorded_settings(out_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """(file, settings) of the generation already in out_dir: its manifest, else any shard's record."""
    candidates = [out_dir / MANIFEST, *sorted((out_dir / SHARDS_DIR).glob("shard-*.json"))]
    for path in candidates:
        if path.is_file():
            try:
                return path, json.loads(path.read_text()).get("settings", {})
            except (json.JSONDecodeError, OSError) as err:
                raise ConfigError(f"{path} cannot be read ({err}); choose another out_dir") from None
    return None


def check_resumable(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix samples of other settings (or foreign files) into one output folder."""
    recorded = recorded_settings(out_dir)
    if recorded is None:
        if (out_dir / "images").is_dir() and any((out_dir / "images").iterdir()):
            raise ConfigError(f"out_dir={out_dir} holds images/ but no {MANIFEST}: not a sample.py output; "
                              "choose another out_dir")
        return
    _, old = recorded
    diffs = [f"{key}: {old.get(key)!r} there, {value!r} now" for key, value in settings.items() if old.get(key) != value]
    if diffs:
        raise ConfigError(f"out_dir={out_dir} holds samples made with other settings ({'; '.join(diffs)}); "
                          "pass another out_dir=..., or delete that folder to start over")


def write_mask_files(out_dir: Path, masks: Sequence[Mask], table: ClassTable = SIDEWALK) -> None:
    """labels/ (ids, mode L), colored_masks/ (the table's colours) and real/ PNGs; existing ones are kept."""
    for mask in masks:
        files = {"labels": mask.label, "colored_masks": table.colorize(mask.label), "real": mask.real}
        for folder, array in files.items():
            path = out_dir / folder / f"{mask.name}.png"
            if array is not None and image_problem(path, array.shape[:2]) is not None:  # missing or damaged
                save_png(array, path)



def sample_seed(mask_seed: int, k: int) -> int:
    """Seed of sample k of a mask: a pure function of (seed + mask index, k), never of batching."""
    return stable_seed(mask_seed, k)


def manifest_items(masks: Sequence[Mask], per_mask: int, seed: int) -> list[dict[str, Any]]:
    return [
        {
            "mask": m.name,
            "index": m.index,
            "seed": seed + m.index,
            "label": f"labels/{m.name}.png",
            "colored_mask": f"colored_masks/{m.name}.png",
            "real": f"real/{m.name}.png" if m.real is not None else None,
            "images": [f"images/{image_name(m.name, k)}" for k in range(m.images(per_mask))],
            "sample_seeds": [sample_seed(seed + m.index, k) for k in range(m.images(per_mask))],
        }
        for m in masks
    ]
