"""Export speed with and without the noisy-pixel filter: seconds per exported image.

    python experiments/bench_filter.py [--sizes 64 256] [--masks 20] [--per-mask 5] [--real 200]

For each size: a sample folder of embedded scenes (noisy copies of each scene's photo as the
"generated" images) whose manifest names a scenes dataset of `--real` rows as the run's data, and
a segmenter of the default instrument's architecture (unet, width 32; untrained: the speed does
not depend on the weights) recorded as trained on that data. It times `export_dataset` without
the filter, and with it, split into the one-off part (loading the segmenter, its mean loss per
class over the real training rows) and the per-image part. Writes results_filter.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine, markdown_table
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.evaluation import write_sample_folder  # noqa: E402

from sdm.checkpoint.files import save_safetensors  # noqa: E402
from sdm.data.prepare import prepare_data  # noqa: E402
from sdm.data.scenes import generate_scene  # noqa: E402
from sdm.generation.export import export_dataset  # noqa: E402
from sdm.generation.filtering import PixelFilter, prepare_filter  # noqa: E402
from sdm.segmenter.cache import INFO_FILE, WEIGHTS_FILE  # noqa: E402
from sdm.segmenter.networks import build_segmenter  # noqa: E402


def real_data(root: Path, size: int, rows: int) -> dict:
    return {"name": "scenes", "num_classes": 35, "size": [size, size], "resize": "stretch", "val_fraction": 0.05,
            "split_seed": 0, "cache_dir": str(root / "data"), "on_bad_row": "error",
            "scenes": {"num": rows, "seed": 0, "size": None}}


def sample_folder(root: Path, size: int, masks: int, per_mask: int, train_data: dict) -> Path:
    rng = np.random.default_rng(0)
    scenes = [generate_scene(90_000 + i, size, size) for i in range(masks)]
    samples = [[np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8) for _ in range(per_mask)]
               for image, _ in scenes]
    settings = {"sampler": {"name": "ddim", "num_steps": 10, "guidance_scale": 1.5}, "size": [size, size],
                "precision": "fp32", "masks": "bench"}
    folder = write_sample_folder(root, [label for _, label in scenes], samples, settings=settings,
                                 train_data=train_data)
    manifest = json.loads((folder / "manifest.json").read_text())
    for k, item in enumerate(manifest["items"]):
        item["sample_seeds"] = list(range(100 * k, 100 * k + per_mask))
    manifest["num_per_mask"] = per_mask
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def segmenter(root: Path, key: str, size: int) -> Path:
    root.mkdir(parents=True)
    network = build_segmenter("unet", 35, 32)
    save_safetensors({k: v.contiguous() for k, v in network.state_dict().items()}, root / WEIGHTS_FILE)
    (root / INFO_FILE).write_text(json.dumps({"arch": "unet", "width": 32, "num_classes": 35, "data_key": key,
                                              "size": [size, size]}))
    return root


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--masks", type=int, default=20)
    parser.add_argument("--per-mask", type=int, default=5)
    parser.add_argument("--real", type=int, default=200, help="real scenes the class means are measured on")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="sdm-bench-filter-"))
        data = real_data(work, size, args.real)
        key = prepare_data(OmegaConf.create(data), show_progress=False).root.name
        folder = sample_folder(work / "samples", size, args.masks, args.per_mask, data)
        pixel_filter = PixelFilter(str(segmenter(work / "seg", key, size)))
        images = args.masks * args.per_mask
        plain = timed(lambda folder=folder, work=work: export_dataset(folder, work / "plain"))
        one_off = timed(lambda data=data, size=size, pixel_filter=pixel_filter: prepare_filter(pixel_filter, data,
                                                                                               (size, size)))
        filtered = timed(lambda folder=folder, work=work, pixel_filter=pixel_filter: export_dataset(
            folder, work / "filtered", pixel_filter=pixel_filter))
        rows.append({"size": f"{size}x{size}", "images": images, "real rows": args.real,
                     "export, s / image": round(plain / images, 4),
                     "filtered export, s / image": round((filtered - one_off) / images, 4),
                     "filter's one-off part (segmenter, class means), s": round(one_off, 2)})
        shutil.rmtree(work)
        print(rows[-1], flush=True)
    table = markdown_table(rows)
    print(table)
    Path(__file__).with_name("results_filter.md").write_text(
        f"# Export speed with the noisy-pixel filter\n\n`python experiments/bench_filter.py` on {machine()}.\n\n"
        f"{args.masks} masks x {args.per_mask} images per size. The filtered export's per-image figure is its "
        "whole time less the one-off part, which runs once per export: loading the segmenter (unet, width 32, "
        "the default instrument) and measuring its mean loss per class over the real training rows.\n\n"
        f"{table}\n")


if __name__ == "__main__":
    main()
