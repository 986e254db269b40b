"""Batched generation: EMA weights + masks -> sample PNGs, comparison grids and a manifest.

Sample k of mask i draws all its noise from its own generator, seeded from (seed + i, k),
and every network pass has the same batch size (the last one is padded). So an image does
not depend on which other samples share its batch: a resumed generation redraws a missing
image pixel for pixel, and asking for more samples per mask later keeps the first ones.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from sdm.atomic import write_atomically
from sdm.checkpoints import (
    CHECKPOINT_DIR,
    EXPORT_DIR,
    ema_state_dict,
    load_checkpoint,
    load_ema_weights,
    load_into,
    read_export_config,
    resolve_weights_source,
)
from sdm.config import number, require
from sdm.data.classes import colorize
from sdm.data.datamodule import split_indices
from sdm.data.prepare import decode_row, prepare_data
from sdm.data.rows import label_to_ids, parse_size, read_rgb_file
from sdm.diffusion import SAMPLERS, sample
from sdm.diffusion.sampling import TIMESTEP_SPACINGS
from sdm.errors import CheckpointError, ConfigError, DataError
from sdm.hardware import cpu_has_bf16, resolve_device
from sdm.models import SDMUNet, label_to_condition
from sdm.module import build_unet, noise_config
from sdm.seeding import stable_seed
from sdm.viz import grid, save_png, to_uint8_image

PRECISIONS = ("bf16", "fp32")
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
MASKS_PER_GRID = 8
MANIFEST = "manifest.json"
FOLDERS = ("images", "labels", "colored_masks", "real", "grids")


@dataclass(frozen=True)
class Mask:
    """One condition: a file stem, its position (the seed offset), class ids, maybe the photo."""

    name: str
    index: int
    label: np.ndarray  # H x W uint8 class ids at the training size
    real: np.ndarray | None = None  # H x W x 3 uint8


@dataclass(frozen=True)
class Model:
    """The EMA U-Net with the resolved config of the run that trained it."""

    unet: SDMUNet
    cfg: dict[str, Any]
    path: Path
    fingerprint: str

    @property
    def size(self) -> tuple[int, int]:
        return parse_size(self.cfg["data"]["size"])


# ----------------------------------------------------------------------------- settings


def check_settings(cfg: DictConfig) -> None:
    """Range checks of every sample.py setting, before any weights or data are read."""
    if OmegaConf.is_missing(cfg, "weights") or not cfg.weights:
        raise ConfigError("weights=... is required: a run dir, its export dir, a .ckpt or a .safetensors file")
    s = cfg.sampler
    require(s.name in SAMPLERS, "sampler.name", s.name, f"one of {sorted(SAMPLERS)} (sampler=ddim|ddpm|dpmpp|unipc)")
    scale = number(cfg, "sampler.guidance_scale", float)
    require(math.isfinite(scale) and scale >= 0, "sampler.guidance_scale", scale,
             "a number >= 0 (1 = no guidance, 1.5 = the paper's)")
    require(number(cfg, "sampler.num_steps") >= 1, "sampler.num_steps", s.num_steps, "an integer >= 1")
    require(number(cfg, "sampler.eta", float) >= 0, "sampler.eta", s.eta, "a number >= 0")
    require(s.timestep_spacing in TIMESTEP_SPACINGS, "sampler.timestep_spacing", s.timestep_spacing,
             f"one of {list(TIMESTEP_SPACINGS)}")
    require(number(cfg, "num_per_mask") >= 1, "num_per_mask", cfg.num_per_mask, "an integer >= 1")
    require(number(cfg, "batch_size") >= 1, "batch_size", cfg.batch_size, "an integer >= 1")
    require(cfg.limit is None or number(cfg, "limit") >= 1, "limit", cfg.limit, "null or an integer >= 1")
    require(number(cfg, "seed") >= 0, "seed", cfg.seed, "an integer >= 0")
    require(cfg.precision in PRECISIONS, "precision", cfg.precision, f"one of {list(PRECISIONS)}")


# ----------------------------------------------------------------------------- weights


def read_weights(source: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """EMA weights and training config: config.yaml beside an export, hyper_parameters in a .ckpt."""
    path = resolve_weights_source(source)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"weights='{path}' is not a weights file ({', '.join(WEIGHT_SUFFIXES)}); give a "
                              "run dir, its export dir, a .ckpt or an ema.safetensors")
    if path.suffix == ".safetensors":
        weights, _ = load_ema_weights(path)
        return weights, read_export_config(path), path
    checkpoint = load_checkpoint(path)
    hyper = checkpoint.get("hyper_parameters")
    cfg = hyper.get("cfg") if isinstance(hyper, dict) else None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"'{path}' carries no training config (hyper_parameters['cfg']): not a checkpoint of sdm")
    return ema_state_dict(checkpoint, str(path)), cfg, path


def weights_fingerprint(weights: dict[str, torch.Tensor]) -> str:
    """An identity of a set of weights: names, shapes, dtypes and every byte of every tensor.

    It tells a resumed generation whether the weights changed (a run trained further and
    exported again under the same path, or a damaged file). Hashing all bytes costs about a
    second per GB, far less than sampling.
    """
    digest = hashlib.blake2b(digest_size=10)
    for name in sorted(weights):
        tensor = weights[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_model(source: str | Path) -> Model:
    """The EMA U-Net of a run dir, export, .ckpt or .safetensors, in eval mode on the CPU."""
    weights, cfg, path = read_weights(source)
    missing = [key for key in ("model", "data", "diffusion") if not isinstance(cfg.get(key), dict)]
    if missing:
        raise CheckpointError(f"the training config of '{path}' lacks {missing}; re-export the run")
    try:
        unet = build_unet(cfg)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"the config of '{path}' does not build a U-Net of this sdm version: {err}") from None
    load_into(unet, weights, str(path))
    return Model(unet.eval().requires_grad_(False), cfg, path, weights_fingerprint(weights))


# ----------------------------------------------------------------------------- masks


def val_masks(train_cfg: dict[str, Any], limit: int | None) -> list[Mask]:
    """The validation split of the run's own data (same cache, same split seed), with the photos."""
    data = OmegaConf.create(train_cfg["data"])
    prepared = prepare_data(data)
    _, val = split_indices(len(prepared), float(data.val_fraction), int(data.split_seed))
    if len(val) == 0:
        raise DataError(f"the training run has no validation split (data.val_fraction={data.val_fraction}); "
                        "pass masks=<folder of label PNGs>")
    rows = prepared.open()
    masks = []
    for position, row_index in enumerate(val[:limit]):
        row = rows[int(row_index)]
        image, label = decode_row(row, prepared.size)
        masks.append(Mask(f"{int(row['index']):06d}", position, label.copy(), image.copy()))
    return masks


def read_mask(path: Path, size: tuple[int, int], num_classes: int) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Class ids of a label PNG (mode L ids or palette colours) at `size`, and its size if resized."""
    try:
        with Image.open(path) as image:
            image.load()
            ids = label_to_ids(image, num_classes)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = str(err).removeprefix("field 'label': ")
        raise DataError(f"mask file '{path}' cannot be used: {reason}") from None
    if ids.shape == size:
        return ids, None
    height, width = size
    resized = Image.fromarray(ids).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(resized), (ids.shape[0], ids.shape[1])


def read_real(path: Path, size: tuple[int, int]) -> np.ndarray | None:
    """The photo of a mask from a sibling images/ folder, when there is one of the same name."""
    return read_rgb_file(path, size, "real image (beside the masks)") if path.is_file() else None


def folder_masks(folder: Path, size: tuple[int, int], num_classes: int, limit: int | None) -> list[Mask]:
    """Label PNGs of a folder in name order; photos come from a sibling images/ folder if present."""
    if not folder.is_dir():
        raise DataError(f"masks={folder}: neither 'val' nor an existing folder of label PNGs")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    if not files:
        raise DataError(f"masks={folder}: the folder holds no .png label files")
    photos = folder.parent / "images"
    masks, resized = [], []
    for position, path in enumerate(files[:limit]):
        label, original = read_mask(path, size, num_classes)
        if original is not None:
            resized.append(f"{path.name} ({original[1]}x{original[0]})")
        real = read_real(photos / path.name, size) if photos.resolve() != folder.resolve() else None
        masks.append(Mask(path.stem, position, label, real))
    if resized:
        print(f"resized {len(resized)} of {len(masks)} masks to the training size {size[1]}x{size[0]} "
              f"(nearest, aspect ratio not kept): {', '.join(resized[:5])}{' ...' if len(resized) > 5 else ''}")
    return masks


def load_masks(spec: str, model: Model, limit: int | None) -> list[Mask]:
    if spec == "val":
        return val_masks(model.cfg, limit)
    num_classes = int(model.cfg["data"]["num_classes"])
    return folder_masks(Path(spec).expanduser(), model.size, num_classes, limit)


# ----------------------------------------------------------------------------- output layout


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
    run_dir = run_dir_of(weights_file)
    if run_dir is None:
        return Path(str(cfg.output_root)) / "samples" / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return run_dir / "samples" / name


def image_name(mask: str, k: int) -> str:
    return f"{mask}_{k}.png"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """JSON written under a temporary name and renamed, so readers never see half a file."""
    text = json.dumps(data, indent=2)
    write_atomically(path, lambda tmp: tmp.write_text(text))


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
        "masks": masks if masks == "val" else str(Path(masks).expanduser().resolve()),
        "size": list(model.size),
    }


def check_resumable(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix samples of other settings (or foreign files) into one output folder."""
    manifest = out_dir / MANIFEST
    if not manifest.is_file():
        if (out_dir / "images").is_dir() and any((out_dir / "images").iterdir()):
            raise ConfigError(f"out_dir={out_dir} holds images/ but no {MANIFEST}: not a sample.py output; "
                              "choose another out_dir")
        return
    try:
        old = json.loads(manifest.read_text()).get("settings", {})
    except (json.JSONDecodeError, OSError) as err:
        raise ConfigError(f"{manifest} cannot be read ({err}); choose another out_dir") from None
    diffs = [f"{key}: {old.get(key)!r} there, {value!r} now" for key, value in settings.items() if old.get(key) != value]
    if diffs:
        raise ConfigError(f"out_dir={out_dir} holds samples made with other settings ({'; '.join(diffs)}); "
                          "pass another out_dir=..., or delete that folder to start over")


def write_mask_files(out_dir: Path, masks: Sequence[Mask]) -> None:
    """labels/ (ids, mode L), colored_masks/ and real/ PNGs; existing ones are kept."""
    for mask in masks:
        files = {"labels": mask.label, "colored_masks": colorize(mask.label), "real": mask.real}
        for folder, array in files.items():
            path = out_dir / folder / f"{mask.name}.png"
            if array is not None and not path.is_file():
                save_png(array, path)


# ----------------------------------------------------------------------------- sampling


def sample_seed(mask_seed: int, k: int) -> int:
    """Seed of sample k of a mask: a pure function of (seed + mask index, k), never of batching."""
    return stable_seed(mask_seed, k)


def sample_batch(model: Model, jobs: Sequence[tuple[Mask, int]], batch: int, cfg: DictConfig,
                 device: torch.device, on_step: Callable[[int, int, torch.Tensor], None] | None = None
                 ) -> torch.Tensor:
    """Images (len(jobs) x 3 x H x W in [-1, 1]) for (mask, k) jobs, padded to `batch` samples."""
    padded = [*jobs, *[jobs[-1]] * (batch - len(jobs))]
    label = torch.from_numpy(np.stack([mask.label for mask, _ in padded])).to(device).long()
    cond = label_to_condition(label, model.unet.num_classes, model.unet.edge_channel)
    seed = int(cfg.seed)
    generators = [torch.Generator().manual_seed(sample_seed(seed + mask.index, k)) for mask, k in padded]
    s = cfg.sampler
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        images = sample(
            model.unet, cond, noise_config=noise_config(model.cfg), sampler=str(s.name),
            num_steps=int(s.num_steps), guidance_scale=float(s.guidance_scale), eta=float(s.eta),
            timestep_spacing=str(s.timestep_spacing), generator=generators, callback=on_step,
        )
    return images[: len(jobs)].float().cpu()


def run_jobs(model: Model, masks: Sequence[Mask], out_dir: Path, cfg: DictConfig,
             device: torch.device) -> Counter[str]:
    """Generate every missing image, batch by batch; returns how many were made per mask."""
    per_mask = int(cfg.num_per_mask)
    jobs = [(m, k) for m in masks for k in range(per_mask)
            if not (out_dir / "images" / image_name(m.name, k)).is_file()]
    left = Counter(mask.name for mask, _ in jobs)
    # A fixed pass size (not the size of what is left) keeps resumed images identical.
    batch = min(int(cfg.batch_size), len(masks) * per_mask)
    bar = tqdm(total=len(masks), initial=len(masks) - len(left), desc="sample", unit="mask")
    steps = int(cfg.sampler.num_steps)
    every = max(1, steps // 10)

    def on_step(i: int, total: int, _x: torch.Tensor) -> None:
        if (i + 1) % every == 0 or i + 1 == total:
            bar.set_postfix_str(f"step {i + 1}/{total}")

    made: Counter[str] = Counter()
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        for (mask, k), image in zip(chunk, sample_batch(model, chunk, batch, cfg, device, on_step), strict=True):
            save_png(to_uint8_image(image), out_dir / "images" / image_name(mask.name, k))
            made[mask.name] += 1
            left[mask.name] -= 1
            if left[mask.name] == 0:
                bar.update(1)
    bar.close()
    return made


# ----------------------------------------------------------------------------- grids, manifest


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def grid_row(out_dir: Path, mask: Mask, per_mask: int, with_real: bool) -> list[np.ndarray]:
    """coloured mask | real photo (grey when a neighbour row has one and this mask not) | samples."""
    row = [colorize(mask.label)]
    if with_real:
        row.append(mask.real if mask.real is not None else np.full((*mask.label.shape, 3), 128, np.uint8))
    return row + [read_rgb(out_dir / "images" / image_name(mask.name, k)) for k in range(per_mask)]


def write_grids(out_dir: Path, masks: Sequence[Mask], per_mask: int, touched: set[str]) -> list[str]:
    """grids/grid_NNN.png, one row per mask, 8 masks each; only grids with new samples are redrawn."""
    names = []
    for index, start in enumerate(range(0, len(masks), MASKS_PER_GRID)):
        group = masks[start : start + MASKS_PER_GRID]
        name = f"grids/grid_{index:03d}.png"
        names.append(name)
        if (out_dir / name).is_file() and not touched.intersection(m.name for m in group):
            continue
        with_real = any(m.real is not None for m in group)
        save_png(grid([grid_row(out_dir, m, per_mask, with_real) for m in group]), out_dir / name)
    return names


def manifest_items(masks: Sequence[Mask], per_mask: int, seed: int) -> list[dict[str, Any]]:
    return [
        {
            "mask": m.name,
            "index": m.index,
            "seed": seed + m.index,
            "label": f"labels/{m.name}.png",
            "colored_mask": f"colored_masks/{m.name}.png",
            "real": f"real/{m.name}.png" if m.real is not None else None,
            "images": [f"images/{image_name(m.name, k)}" for k in range(per_mask)],
            "sample_seeds": [sample_seed(seed + m.index, k) for k in range(per_mask)],
        }
        for m in masks
    ]


# ----------------------------------------------------------------------------- entry point


def generate(cfg: DictConfig) -> dict[str, Any]:
    """Run a whole generation as configured; returns the manifest (also written to out_dir)."""
    started = time.perf_counter()
    check_settings(cfg)
    device = resolve_device(str(cfg.device))
    if cfg.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        print("precision=bf16: this CPU has no native bf16 (no AVX-512 BF16 / AMX), where it runs many times "
              "slower than float32; sampling in fp32 instead")
        cfg = OmegaConf.merge(cfg, {"precision": "fp32"})
    model = load_model(str(cfg.weights))
    total_steps = int(model.cfg["diffusion"]["num_train_timesteps"])
    require(int(cfg.sampler.num_steps) <= total_steps, "sampler.num_steps", cfg.sampler.num_steps,
             f"at most the {total_steps} training timesteps")
    limit = None if cfg.limit is None else int(cfg.limit)
    masks = load_masks(str(cfg.masks), model, limit)
    out_dir = Path(str(cfg.out_dir)).expanduser() if cfg.out_dir else default_out_dir(cfg, model.path)
    settings = run_settings(cfg, model)
    check_resumable(out_dir, settings)
    for folder in FOLDERS:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    per_mask, seed = int(cfg.num_per_mask), int(cfg.seed)
    manifest: dict[str, Any] = {
        "settings": settings,
        "weights": {"given": str(cfg.weights), "file": str(model.path), "run": model.cfg.get("run_name"),
                    "run_dir": str(run_dir_of(model.path)) if run_dir_of(model.path) else None},
        "train_data": model.cfg["data"],  # the evaluation finds the segmenter of this data
        "num_per_mask": per_mask,
        "batch_size": int(cfg.batch_size),
        "device": str(device),
        "seeding": "sample k of mask i: torch.Generator seeded with sdm.generate.sample_seed(seed + i, k)",
        "complete": False,
    }
    write_json(out_dir / MANIFEST, manifest)
    s = cfg.sampler
    print(f"{len(masks)} masks x {per_mask} samples, {s.name} {s.num_steps} steps, guidance {s.guidance_scale}, "
          f"{cfg.precision} on {device}, weights {model.path}\n -> {out_dir} (re-run with out_dir={out_dir} to resume)")
    model.unet.to(device)
    write_mask_files(out_dir, masks)
    made = run_jobs(model, masks, out_dir, cfg, device)
    grids = write_grids(out_dir, masks, per_mask, set(made))
    seconds = time.perf_counter() - started
    manifest.update(complete=True, images_made=sum(made.values()), seconds=round(seconds, 2),
                    items=manifest_items(masks, per_mask, seed), grids=grids)
    write_json(out_dir / MANIFEST, manifest)
    print(f"made {sum(made.values())} images ({len(masks) * per_mask - sum(made.values())} were there) in "
          f"{seconds:.1f} s; grids: {out_dir / 'grids'}")
    return {**manifest, "out_dir": str(out_dir)}
