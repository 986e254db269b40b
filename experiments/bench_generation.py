"""Generation speed: images per second with 1 and 2 local processes, and seconds per exported image.

    python experiments/bench_generation.py [--size 64] [--masks 48] [--per-mask 2] [--repeats 2]

Builds the tiny model at SIZE x SIZE (random weights: speed does not depend on training),
then times `python sample.py` end to end (start-up, masks, sampling, PNGs, manifest, grids)
with devices=1 and devices=2 (CPU processes, each with half the cores) and sample.py's
defaults (UniPC 15 steps, guidance 1.5: two network passes per step, bf16 where native).
Then the export of the result (`sdm.generation.export`, timed in-process, so without the
import of `datasets`), as is and resized to 4x the size.
Medians over the repeats; writes results_generation.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, compose, machine, markdown_table
from omegaconf import OmegaConf

from sdm.checkpoint.files import EXPORT_DIR, export_ema
from sdm.generation.export import export_dataset
from sdm.models.build import build_unet


def tiny_run(root: Path, size: int, num_masks: int) -> Path:
    """A run dir holding the quickstart's tiny U-Net at `size` with random weights."""
    cfg = compose("experiment=quickstart", f"data.size=[{size},{size}]", f"data.scenes.num={num_masks}",
                  f"data.cache_dir={root / 'data'}")
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["output_dir"] = str(root / "run")
    unet = build_unet(plain)
    export_ema(unet.state_dict(), plain, root / "run" / EXPORT_DIR)
    return root / "run"


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def row(what: str, images: int, seconds: float) -> dict[str, str | int]:
    return {"what": what, "images": images, "seconds (median)": f"{seconds:.1f}",
            "images/s": f"{images / seconds:.2f}", "s/image": f"{seconds / images:.3f}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--masks", type=int, default=48)
    parser.add_argument("--per-mask", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    images = args.masks * args.per_mask
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = tiny_run(root, args.size, args.masks)
        sample = [sys.executable, "sample.py", f"weights={run}", "masks=all", f"num_per_mask={args.per_mask}",
                  "batch_size=16"]
        timings = {}
        for devices in (1, 2):
            seconds = []
            for repeat in range(args.repeats):
                out = root / f"samples-{devices}-{repeat}"
                seconds.append(timed([*sample, f"devices={devices}", f"out_dir={out}"]))
            timings[devices] = statistics.median(seconds)
            rows.append(row(f"sample.py devices={devices}", images, timings[devices]))
        for size in (None, 4 * args.size):  # in this process: the per-image cost, not the import of datasets
            seconds = []
            for repeat in range(args.repeats):
                out = root / f"export-{size}-{repeat}"
                started = time.perf_counter()
                export_dataset(root / "samples-1-0", out, size=(size, size) if size else None)
                seconds.append(time.perf_counter() - started)
                shutil.rmtree(out)
            what = f"export resized to {size}x{size}" if size else f"export at {args.size}x{args.size}"
            rows.append(row(what, images, statistics.median(seconds)))
    table = markdown_table(rows)
    print(table)
    text = (f"# Generation speed\n\n`python experiments/bench_generation.py --size {args.size} --masks {args.masks} "
            f"--per-mask {args.per_mask} --repeats {args.repeats}` on {machine()}.\n\n"
            f"Tiny U-Net at {args.size}x{args.size}, random weights; sample.py defaults (UniPC 15 steps, "
            "guidance 1.5); wall-clock of the whole command including Python start-up, median of "
            f"{args.repeats} runs; the export is timed in-process (PNG decode, resize, parquet, card).\n\n{table}\n\nTwo processes vs one: {timings[1] / timings[2]:.2f}x.\n")
    Path(__file__).with_name("results_generation.md").write_text(text)


if __name__ == "__main__":
    main()
