"""Augmentation study: do generated images help a segmenter trained on few real ones?

    python experiments/study_augmentation.py [--sizes 100 1000] [--seeds 0 1 2] [--root runs/study_augmentation]

For each real training-set size N (embedded street scenes, seed 0, the run's 95 % training
split) it runs the project's own commands, each skipped when its output is complete:

1. `train.py experiment=quickstart` on those N scenes only: the generator never sees more;
2. `sample.py masks=train export=true`: new images for the training masks, as a Hub-schema dataset;
3. one Hydra multirun of the segmenter, the same network and steps for every cell:
   `python -m sdm.metrics.segmenter -m seed=0,1,2 data.extra=<export> data.extra_ratio=0,0.5,1`
   (0: real only, 0.5: real + synthetic, 1: synthetic only), each scored by `segmenter.test` on
   held-out real scenes of another scene seed, which neither the generator nor a segmenter saw.

Writes results_augmentation.md (mean, spread and every seed) and results_augmentation.svg.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import machine

REPO = Path(__file__).resolve().parents[1]
MIXES = {0.0: "real", 0.5: "real + synthetic", 1.0: "synthetic"}
TEST = "{scenes:{seed:1000,num:500}}"  # 500 held-out scenes: another seed of the scene generator
SIZE = "[32,32]"


def run(command: list[str], log: Path) -> float:
    """Run one stage with its output in `log`; stop the study with the log's tail if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as handle:
        handle.write(" ".join(command) + "\n\n")
        handle.flush()
        status = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT).returncode
    if status != 0:
        tail = "\n".join(log.read_text(errors="replace").replace("\r", "\n").splitlines()[-15:])
        sys.exit(f"error: {' '.join(command[:3])} ... failed (exit {status}); log {log}:\n{tail}")
    return time.perf_counter() - started


def data_overrides(num: int) -> list[str]:
    return ["data=scenes", f"data.size={SIZE}", f"data.scenes.num={num}"]


def study_size(root: Path, num: int, seeds: list[int], per_mask: int, generator_steps: int,
               segmenter_steps: int) -> dict[str, float]:
    """The three stages for one real-set size; returns the minutes each one took."""
    python, folder = sys.executable, root / f"n{num}"
    train, samples, export = folder / "train", folder / "samples", folder / "export"
    minutes: dict[str, float] = {}
    if not (train / "export" / "ema.safetensors").is_file():
        minutes["generator"] = run([python, "train.py", "experiment=quickstart", *data_overrides(num),
                                    "data.batch_size=16", f"trainer.max_steps={generator_steps}", "logger=none",
                                    f"run_dir={train}", "ckpt_path=auto"], folder / "logs" / "train.log") / 60
    if not (export / "sdm_export.json").is_file():
        minutes["generation"] = run([python, "sample.py", f"weights={train}", "masks=train",
                                     f"num_per_mask={per_mask}", "batch_size=64", f"out_dir={samples}",
                                     "export=true", f"export_dir={export}"], folder / "logs" / "sample.log") / 60
    minutes["segmenters"] = run([python, "-m", "sdm.metrics.segmenter", "-m", *data_overrides(num),
                                 f"seed={','.join(map(str, seeds))}", f"data.extra={export}",
                                 f"data.extra_ratio={','.join(f'{r:g}' for r in MIXES)}",
                                 f"segmenter.max_steps={segmenter_steps}", "segmenter.progress_bar=false",
                                 f"segmenter.test={TEST}", f"segmenter.cache_dir={folder / 'segmenters'}",
                                 f"hydra.sweep.dir={folder / 'segmenter_runs'}"],
                                folder / "logs" / "segmenters.log") / 60
    return minutes


def collect(root: Path, sizes: list[int], seeds: list[int]) -> list[dict]:
    """One row per (size, mix, seed) from the segmenters' info files."""
    rows = []
    for num in sizes:
        for info_file in sorted((root / f"n{num}" / "segmenters").glob("*/segmenter.json")):
            info = json.loads(info_file.read_text())
            extra = info.get("extra") or {}
            if info.get("seed", 0) in seeds and extra.get("ratio") in MIXES and "test" in info:
                rows.append({"num": num, "mix": MIXES[extra["ratio"]], "ratio": extra["ratio"], "seed": info["seed"],
                             "test_miou": info["test"]["miou"], "val_miou": info["real_val_miou"],
                             "synthetic_rows": extra.get("rows"), "seconds": info["seconds"]})
    return rows


def summary_rows(rows: list[dict]) -> list[dict]:
    """Mean, standard deviation and range of the test mIoU per (size, mix)."""
    out = []
    for num in sorted({r["num"] for r in rows}):
        for ratio, mix in MIXES.items():
            values = [r["test_miou"] for r in rows if r["num"] == num and r["ratio"] == ratio]
            if values:
                out.append({"num": num, "mix": mix, "n": len(values), "mean": statistics.mean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                            "min": min(values), "max": max(values)})
    return out


def markdown(summary: list[dict], rows: list[dict]) -> str:
    text = "| real scenes | trained on | seeds | test mIoU mean | std | min - max |\n|---|---|---|---|---|---|\n"
    text += "".join(f"| {s['num']} | {s['mix']} | {s['n']} | {s['mean']:.3f} | {s['std']:.3f} | "
                    f"{s['min']:.3f} - {s['max']:.3f} |\n" for s in summary)
    text += "\nEvery run:\n\n| real scenes | trained on | seed | test mIoU | val mIoU (real split) | minutes |\n"
    text += "|---|---|---|---|---|---|\n"
    text += "".join(f"| {r['num']} | {r['mix']} | {r['seed']} | {r['test_miou']:.3f} | {r['val_miou']:.3f} | "
                    f"{r['seconds'] / 60:.1f} |\n" for r in sorted(rows, key=lambda r: (r["num"], r["ratio"], r["seed"])))
    return text


def svg_plot(summary: list[dict], rows: list[dict]) -> str:
    """Test mIoU per mix and size: every seed as a dot, the mean as a bar."""
    sizes = sorted({s["num"] for s in summary})
    top = max([r["test_miou"] for r in rows] + [0.1]) * 1.15
    width, height, left, bottom, group = 140 + 260 * len(sizes), 320, 60, 270, 260
    colours = {"real": "#4c72b0", "real + synthetic": "#55a868", "synthetic": "#c44e52"}
    y = lambda v: bottom - v / top * 230  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             'font-size="12">', f'<line x1="{left}" y1="{bottom}" x2="{width - 20}" y2="{bottom}" stroke="black"/>',
             f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="30" stroke="black"/>',
             '<text x="10" y="20">test mIoU (held-out real scenes)</text>']
    for tick in [i * top / 5 for i in range(6)]:
        parts.append(f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.2f}</text>')
    for g, num in enumerate(sizes):
        x0 = left + 30 + g * group
        parts.append(f'<text x="{x0 + 100}" y="{bottom + 35}" text-anchor="middle">{num} real scenes</text>')
        for m, mix in enumerate(MIXES.values()):
            x = x0 + m * 70
            s = next((s for s in summary if s["num"] == num and s["mix"] == mix), None)
            if s is None:
                continue
            parts.append(f'<rect x="{x}" y="{y(s["mean"]):.1f}" width="50" height="{bottom - y(s["mean"]):.1f}" '
                         f'fill="{colours[mix]}" fill-opacity="0.45"/>')
            for r in rows:
                if r["num"] == num and r["mix"] == mix:
                    parts.append(f'<circle cx="{x + 25}" cy="{y(r["test_miou"]):.1f}" r="3" fill="{colours[mix]}"/>')
            parts.append(f'<text x="{x + 25}" y="{bottom + 15}" text-anchor="middle" font-size="10">'
                         f'{mix.replace("real + synthetic", "mixed")}</text>')
    return "\n".join([*parts, "</svg>\n"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="real training scenes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="segmenter seeds")
    parser.add_argument("--per-mask", type=int, default=5, help="generated images per training mask")
    parser.add_argument("--generator-steps", type=int, default=600)
    parser.add_argument("--segmenter-steps", type=int, default=600)
    parser.add_argument("--root", default="runs/study_augmentation")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    minutes = {}
    for num in args.sizes:
        minutes[num] = study_size(root, num, args.seeds, args.per_mask, args.generator_steps, args.segmenter_steps)
        print(f"{num} real scenes: " + ", ".join(f"{k} {v:.1f} min" for k, v in minutes[num].items()), flush=True)
    rows = collect(root, args.sizes, args.seeds)
    summary = summary_rows(rows)
    plot = Path(__file__).with_name("results_augmentation.svg")
    plot.write_text(svg_plot(summary, rows))
    command = " ".join(["python experiments/study_augmentation.py", "--sizes", *map(str, args.sizes),
                        "--seeds", *map(str, args.seeds), f"--per-mask {args.per_mask}",
                        f"--generator-steps {args.generator_steps}", f"--segmenter-steps {args.segmenter_steps}"])
    times = "; ".join(f"{num} scenes: " + ", ".join(f"{k} {v:.0f} min" for k, v in m.items())
                      for num, m in minutes.items())
    body = (f"# Augmentation study\n\n`{command}` on {machine()} ({times}).\n\n"
            f"Real training data: the first N embedded street scenes (seed 0) at 32x32, of which the 95 % "
            f"training split is used. Generator: the quickstart recipe trained on those scenes only for "
            f"{args.generator_steps} steps; synthetic data: {args.per_mask} images per training mask (sample.py "
            f"defaults: UniPC 15 steps, guidance 1.5), exported in the Hub schema. Segmenter: the project's small "
            f"segmenter, {args.segmenter_steps} steps of batch 16 for every cell; test: 500 held-out scenes of "
            f"scene seed 1000, scored on every pixel but unlabeled.\n\n{markdown(summary, rows)}\n"
            f"![test mIoU per training data](results_augmentation.svg)\n")
    out = Path(__file__).with_name("results_augmentation.md")
    out.write_text(body)
    print(markdown(summary, rows))
    print(f"-> {out}, {plot}")


if __name__ == "__main__":
    main()
