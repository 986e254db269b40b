"""A whole generation: batches of (mask, sample) jobs through the sampler, resumable file by file.

Sample k of mask i draws all its noise from its own generator, seeded from (seed + i, k),
and every network pass has the same batch size (the last one is padded). So an image does
not depend on which other samples share its batch: a resumed generation redraws a missing
image pixel for pixel, and asking for more samples per mask later keeps the first ones.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sdm.core.atomic import write_json
from sdm.core.checks import require
from sdm.core.errors import ConfigError
from sdm.core.hardware import cpu_has_bf16, resolve_device
from sdm.core.places import check_output_folder
from sdm.core.viz import image_problem, save_png, to_uint8_image
from sdm.data.classes import class_table
from sdm.diffusion import noise_config, sample
from sdm.generation.grids import write_grids
from sdm.generation.hardness import with_hardness_counts
from sdm.generation.layout import (
    FOLDERS,
    MANIFEST,
    check_resumable,
    default_out_dir,
    image_name,
    manifest_items,
    run_dir_of,
    run_settings,
    sample_seed,
    write_mask_files,
)
from sdm.generation.masks import Mask, load_masks, mask_source, mask_variations
from sdm.generation.settings import check_settings
from sdm.generation.shards import merge_shards, parse_shard, shard_masks, shard_record_path
from sdm.generation.weights import Model, load_model
from sdm.models import label_to_condition


def sample_batch(model: Model, jobs: Sequence[tuple[Mask, int]], batch: int, cfg: DictConfig,
                 device: torch.device, on_step: Callable[[int, int, torch.Tensor], None] | None = None
                 ) -> torch.Tensor:
    """Images (len(jobs) x 3 x H x W in [-1, 1]) for (mask, k) jobs, padded to `batch` samples."""
    padded = [*jobs, *[jobs[-1]] * (batch - len(jobs))]
    label = torch.from_numpy(np.stack([mask.label for mask, _ in padded])).to(device).long()
    edge_ids = None
    if model.unet.edge_channel and any(mask.instance is not None for mask, _ in padded):
        # instance ids where a mask has them; its class ids (the same edges as without) where not
        edge_ids = torch.from_numpy(np.stack([(mask.label if mask.instance is None else mask.instance).astype(np.int64)
                                              for mask, _ in padded])).to(device)
    cond = label_to_condition(label, model.unet.num_classes, model.unet.edge_channel, edge_ids)
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


def pass_size(cfg: DictConfig, masks: Sequence[Mask]) -> int:
    """Images per network pass: fixed by the whole run (never by what is left, nor by a shard's
    share), so resumed and sharded runs draw every image exactly as one uninterrupted run."""
    return min(int(cfg.batch_size), sum(m.images(int(cfg.num_per_mask)) for m in masks))


def image_done(path: Path, size: tuple[int, ...]) -> bool:
    """An image there decodes whole at the mask's size; a damaged one (a copy cut short, a full disk
    under another writer) is removed, to be drawn again with its own seed."""
    if not path.is_file():
        return False
    problem = image_problem(path, size[:2])
    if problem is None:
        return True
    print(f"{path} {problem}: drawing it again")
    path.unlink()
    return False


def run_jobs(model: Model, masks: Sequence[Mask], out_dir: Path, cfg: DictConfig,
             device: torch.device, batch: int, desc: str) -> Counter[str]:
    """Generate every missing image, `batch` per pass; returns how many were made per mask."""
    per_mask = int(cfg.num_per_mask)
    jobs = [(m, k) for m in masks for k in range(m.images(per_mask))
            if not image_done(out_dir / "images" / image_name(m.name, k), m.label.shape)]
    left = Counter(mask.name for mask, _ in jobs)
    bar = tqdm(total=len(masks), initial=len(masks) - len(left), desc=desc, unit="mask")
    steps = int(cfg.sampler.num_steps)
    every = max(1, steps // 10)

    def on_step(i: int, total: int, _x: torch.Tensor) -> None:
        if (i + 1) % every == 0 or i + 1 == total:
            bar.set_postfix_str(f"step {i + 1}/{total}")

    made: Counter[str] = Counter()
    try:
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            for (mask, k), image in zip(chunk, sample_batch(model, chunk, batch, cfg, device, on_step), strict=True):
                save_png(to_uint8_image(image), out_dir / "images" / image_name(mask.name, k))
                made[mask.name] += 1
                left[mask.name] -= 1
                if left[mask.name] == 0:
                    bar.update(1)
    finally:
        bar.close()  # before an error or Ctrl-C is reported, not after it
    return made


def located(data: dict[str, Any], source: dict[str, Any] | None) -> dict[str, Any]:
    """The model's data, placed: a converted official checkpoint knows its dataset but not where it
    lies, and the mask_source that gave its masks says (its path and cache only, not its split)."""
    if str(data.get("path")) != "???" or not source or not source.get("path"):
        return data
    return {**data, **{key: source[key] for key in ("path", "cache_dir") if source.get(key)}}


def absolute_caches(data: dict[str, Any]) -> dict[str, Any]:
    """A run's data settings with its cache folders made absolute from here, where the run is used:
    relative, they would send an evaluation elsewhere to prepare the dataset again where it stands."""
    folders = {key: str(Path(str(data[key])).expanduser().absolute()) for key in ("cache_dir", "hub_cache_dir")
               if data.get(key)}
    path = Path(str(data.get("path") or "")).expanduser()
    if data.get("path") and path.exists():  # a local dataset (a folder source, a Hub-schema copy) likewise
        folders["path"] = str(path.absolute())
    return {**data, **folders}


def generate_here(cfg: DictConfig) -> dict[str, Any]:
    """Run the generation (or the shard=i/n of it) in this process; returns the manifest, or
    {"complete": False, ...} for a shard that finished while others still run."""
    check_settings(cfg)
    started = time.perf_counter()
    index, count = parse_shard(cfg.shard)
    device = resolve_device(str(cfg.device))
    if cfg.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        print("precision=bf16: this CPU has no native bf16 (no AVX-512 BF16 / AMX), where it runs many times "
              "slower than float32; sampling in fp32 instead")
        cfg = OmegaConf.merge(cfg, {"precision": "fp32"})
    model = load_model(str(cfg.weights))
    out_dir = Path(str(cfg.out_dir)).expanduser() if cfg.out_dir else default_out_dir(cfg, model.path)
    out_dir = check_output_folder(out_dir, "out_dir")  # before the masks are read and the first image made
    total_steps = int(model.cfg["diffusion"]["num_train_timesteps"])
    require(int(cfg.sampler.num_steps) <= total_steps, "sampler.num_steps", cfg.sampler.num_steps,
             f"at most the {total_steps} training timesteps")
    if count > 1 and not cfg.out_dir and run_dir_of(model.path) is None:
        raise ConfigError(f"shard={cfg.shard} needs out_dir=...: the weights sit outside a run dir, and every "
                          "shard must write into the same folder")
    limit = None if cfg.limit is None else int(cfg.limit)
    masks = load_masks(str(cfg.masks), model, limit, mask_source(cfg), mask_variations(cfg), int(cfg.seed))
    if cfg.get("hardness"):  # over all masks, so that every shard gives a mask the same count
        masks = with_hardness_counts(masks, cfg.hardness, model.cfg["data"], tuple(model.size))
    mine = shard_masks(masks, index, count)
    settings = run_settings(cfg, model)
    check_resumable(out_dir, settings)
    for folder in FOLDERS:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    per_mask = int(cfg.num_per_mask)
    run_dir = run_dir_of(model.path)
    base: dict[str, Any] = {  # paths absolute: an evaluation started from another folder reads the same places
        "settings": settings,
        "weights": {"given": str(cfg.weights), "file": str(model.path.absolute()), "run": model.cfg.get("run_name"),
                    "run_dir": str(run_dir.absolute()) if run_dir else None},
        "train_data": absolute_caches(located(model.cfg["data"], mask_source(cfg))),  # the evaluation's segmenter's data
        "num_per_mask": per_mask,
        "batch_size": int(cfg.batch_size),
        "seeding": "sample k of mask i: torch.Generator seeded with sdm.generation.sample_seed(seed + i, k)",
    }
    record_path = out_dir / MANIFEST if count == 1 else shard_record_path(out_dir, index, count)
    record = {**base, "device": str(device), "complete": False}
    if count > 1:
        record["shard"] = [index, count]
    write_json(record_path, record)
    s = cfg.sampler
    share = f"shard {index}/{count}: {len(mine)} of {len(masks)}" if count > 1 else f"{len(masks)}"
    print(f"{share} masks x {per_mask} samples, {s.name} {s.num_steps} steps, guidance {s.guidance_scale}, "
          f"{cfg.precision} on {device}, weights {model.path}\n -> {out_dir} (re-run with out_dir={out_dir} to resume)")
    model.unet.to(device)
    table = class_table(model.cfg["data"])
    write_mask_files(out_dir, mine, table)
    desc = f"sample {index}/{count}" if count > 1 else "sample"
    made = run_jobs(model, mine, out_dir, cfg, device, pass_size(cfg, masks), desc)
    seconds = time.perf_counter() - started
    record.update(complete=True, images_made=sum(made.values()), seconds=round(seconds, 2))
    wanted = sum(m.images(per_mask) for m in mine)
    print(f"made {sum(made.values())} images ({wanted - sum(made.values())} were there) in "
          f"{seconds:.1f} s")
    if count == 1:
        grids = write_grids(out_dir, masks, per_mask, set(made), table)
        record.update(items=manifest_items(masks, per_mask, int(cfg.seed)), grids=grids)
        write_json(record_path, record)
        print(f"grids: {out_dir / 'grids'}")
        return {**record, "out_dir": str(out_dir)}
    record["items"] = manifest_items(mine, per_mask, int(cfg.seed))
    write_json(record_path, record)
    merged = merge_shards(out_dir, masks, count, base)
    if merged is None:  # the generation as a whole is not complete: other shards are still running
        return {"complete": False, "shard": [index, count], "shard_record": str(record_path), "out_dir": str(out_dir)}
    print(f"all {count} shards complete: {out_dir / MANIFEST}, grids: {out_dir / 'grids'}")
    return {**merged, "out_dir": str(out_dir)}
