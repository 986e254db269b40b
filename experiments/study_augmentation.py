"""Augmentation study: do generated images help a segmenter trained on few real ones?

    python experiments/study_augmentation.py [--sizes 20 100 1000] [--seeds 0 1 2] [--root runs/study_augmentation]

For each real training-set size N (embedded street scenes, seed 0, the run's 95 % training
split) it runs the project's own commands, each skipped when its output is complete:

1. `train.py experiment=quickstart` on those N scenes only: the generator never sees more;
2. `sample.py masks=train export=true`: new images for the training masks, as a Hub-schema dataset;
   and `sample.py masks=train 'mask_source={scenes:{seed:7}}' export=true`: as many images for
   new layouts (scenes the real set does not hold; their photos are never used);
3. Hydra multiruns of the segmenter, the same network and steps for every cell:
   `python -m sdm.cli.segmenter -m seed=0,1,2 data.extra=<export> data.extra_ratio=0,0.5,1`
   (0: real only, 0.5: real + synthetic, 1: synthetic only), each scored by `segmenter.test` on
   held-out real scenes of another scene seed, which neither the generator nor a segmenter saw.

Writes results_augmentation.md (mean, spread and every seed) and results_augmentation.png.
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
RATIOS = (0.0, 0.5, 1.0)  # share of synthetic rows per epoch: real only, half, synthetic only
# (share, where the synthetic images' masks come from) -> the name in tables and the plot
MIXES = {(0.0, "train"): "real", (0.5, "train"): "real + synthetic", (1.0, "train"): "synthetic",
         (0.5, "new"): "real + synthetic (new masks)", (1.0, "new"): "synthetic (new masks)"}
EXPORTS = {"train": "export", "new": "export_new"}  # folder of each synthetic set
NEW_MASKS = "{scenes:{seed:7}}"  # new layouts: the training split of scenes the real set does not hold
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
    """The three stages for one real-set size; returns the minutes the generator and generation took."""
    python, folder = sys.executable, root / f"n{num}"
    train = folder / "train"
    times = folder / "minutes.json"  # what the generator and the generation took when they ran
    minutes: dict[str, float] = json.loads(times.read_text()) if times.is_file() else {}
    settings, record = {"per_mask": per_mask, "generator_steps": generator_steps}, folder / "settings.json"
    if record.is_file() and json.loads(record.read_text()) != settings:
        sys.exit(f"error: {folder} was made with {json.loads(record.read_text())}, not {settings}; "
                 "pass another --root")
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings))
    if not (train / "export" / "ema.safetensors").is_file():
        minutes["generator"] = run([python, "train.py", "experiment=quickstart", *data_overrides(num),
                                    "data.batch_size=16", f"trainer.max_steps={generator_steps}", "logger=none",
                                    f"run_dir={train}", "ckpt_path=auto"], folder / "logs" / "train.log") / 60
    masks = {"train": [], "new": [f"mask_source={NEW_MASKS}"]}
    for source, extra in masks.items():
        export = folder / EXPORTS[source]
        if not (export / "sdm_export.json").is_file():
            minutes[f"generation ({source} masks)"] = run(
                [python, "sample.py", f"weights={train}", "masks=train", *extra, f"num_per_mask={per_mask}",
                 "batch_size=64", f"out_dir={folder / ('samples' if source == 'train' else 'samples_new')}",
                 "export=true", f"export_dir={export}"], folder / "logs" / f"sample_{source}.log") / 60
    folder.mkdir(parents=True, exist_ok=True)
    times.write_text(json.dumps(minutes))
    for source in masks:  # real only once: with ratio 0 the synthetic rows are never drawn
        ratios = RATIOS if source == "train" else RATIOS[1:]
        run([python, "-m", "sdm.cli.segmenter", "-m", *data_overrides(num), f"seed={','.join(map(str, seeds))}",
             f"data.extra={folder / EXPORTS[source]}", f"data.extra_ratio={','.join(f'{r:g}' for r in ratios)}",
             f"segmenter.max_steps={segmenter_steps}", "segmenter.progress_bar=false", f"segmenter.test={TEST}",
             f"segmenter.cache_dir={folder / 'segmenters'}", f"hydra.sweep.dir={folder / 'segmenter_runs' / source}"],
            folder / "logs" / f"segmenters_{source}.log")
    return minutes


def collect(root: Path, sizes: list[int], seeds: list[int]) -> list[dict]:
    """One row per (size, mix, seed) from the segmenters' info files."""
    rows = []
    for num in sizes:
        for info_file in sorted((root / f"n{num}" / "segmenters").glob("*/segmenter.json")):
            info = json.loads(info_file.read_text())
            extra = info.get("extra") or {}
            key = (extra.get("ratio"), "new" if Path(str(extra.get("path"))).name == EXPORTS["new"] else "train")
            if info.get("seed", 0) in seeds and key in MIXES and "test" in info:
                rows.append({"num": num, "mix": MIXES[key], "key": key, "seed": info["seed"],
                             "test_miou": info["test"]["miou"], "val_miou": info["real_val_miou"],
                             "synthetic_rows": extra.get("rows"), "seconds": info["seconds"]})
    return rows


def label_fidelity(root: Path, num: int, source: str) -> float | None:
    """mIoU of the real-only segmenter (seed 0) on the synthetic images against the masks they
    were made from: how far the generated pixels follow their labels, seen by a real-data model."""
    from sdm.core.configs import compose
    from sdm.data.mixing import extra_source_cfg
    from sdm.segmenter.cache import load_segmenter
    from sdm.segmenter.held_out import held_out_scores

    folder = root / f"n{num}"
    for info_file in sorted((folder / "segmenters").glob("*/segmenter.json")):
        info = json.loads(info_file.read_text())
        if info.get("seed") == 0 and (info.get("extra") or {}).get("ratio") == 0.0:
            cfg = compose("segmenter", [*data_overrides(num), f"data.extra={folder / EXPORTS[source]}"])
            network, _ = load_segmenter(info_file.parent)
            return held_out_scores(network, extra_source_cfg(cfg.data))["miou"]
    return None


def real_test(rows: list[dict], num: int) -> float:
    return next(r["test_miou"] for r in rows if r["num"] == num and r["key"] == (0.0, "train") and r["seed"] == 0)


def summary_rows(rows: list[dict]) -> list[dict]:
    """Mean, standard deviation and range of the test mIoU per (size, mix)."""
    out = []
    for num in sorted({r["num"] for r in rows}):
        for key, mix in MIXES.items():
            values = [r["test_miou"] for r in rows if r["num"] == num and r["key"] == key]
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
                    f"{r['seconds'] / 60:.1f} |\n" for r in sorted(rows, key=lambda r: (r["num"], list(MIXES).index(r["key"]), r["seed"])))
    return text


def plot(summary: list[dict], rows: list[dict], path: Path) -> None:
    """Test mIoU per mix and size: every seed as a dot, the mean as a bar (PNG, drawn with PIL)."""
    from PIL import Image, ImageDraw, ImageFont

    sizes = sorted({s["num"] for s in summary})
    top = max([r["test_miou"] for r in rows] + [0.1]) * 1.15
    group, left, bottom = 420, 70, 300
    image = Image.new("RGB", (left + 40 + group * len(sizes), bottom + 70), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=14)
    colours = dict(zip(MIXES.values(), [(76, 114, 176), (85, 168, 104), (196, 78, 82), (44, 130, 60), (150, 40, 50)],
                       strict=True))
    short = dict(zip(MIXES.values(), ["real", "mixed", "synthetic", "mixed\nnew masks", "synthetic\nnew masks"],
                     strict=True))
    y = lambda v: bottom - v / top * 250  # noqa: E731
    draw.line([(left, bottom), (image.width - 20, bottom)], fill="black")
    draw.line([(left, bottom), (left, 30)], fill="black")
    draw.text((10, 8), "test mIoU on 500 held-out real scenes (bar: mean, dots: seeds)", fill="black", font=font)
    for i in range(6):
        tick = i * top / 5
        draw.text((left - 8, y(tick)), f"{tick:.2f}", fill="black", font=font, anchor="rm")
    for g, num in enumerate(sizes):
        x0 = left + 30 + g * group
        draw.text((x0 + 180, bottom + 50), f"{num} real scenes", fill="black", font=font, anchor="mm")
        for m, mix in enumerate(MIXES.values()):
            x = x0 + m * 75
            mean = next((s["mean"] for s in summary if s["num"] == num and s["mix"] == mix), None)
            if mean is None:
                continue
            light = tuple(c + (255 - c) // 2 for c in colours[mix])
            draw.rectangle([x, y(mean), x + 55, bottom], fill=light)
            for r in rows:
                if r["num"] == num and r["mix"] == mix:
                    cy = y(r["test_miou"])
                    draw.ellipse([x + 24, cy - 4, x + 32, cy + 4], fill=colours[mix])
            draw.multiline_text((x + 27, bottom + 6), short[mix], fill="black", font=font, anchor="ma",
                                align="center")
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 100, 1000], help="real training scenes")
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
    fidelity = {(num, source): label_fidelity(root, num, source) for num in args.sizes for source in EXPORTS}
    for num in args.sizes:
        minutes[num]["segmenters"] = sum(r["seconds"] for r in rows if r["num"] == num) / 60
    figure = Path(__file__).with_name("results_augmentation.png")
    plot(summary, rows, figure)
    command = " ".join(["python experiments/study_augmentation.py", "--sizes", *map(str, args.sizes),
                        "--seeds", *map(str, args.seeds), f"--per-mask {args.per_mask}",
                        f"--generator-steps {args.generator_steps}", f"--segmenter-steps {args.segmenter_steps}"])
    times = "; ".join(f"{num} scenes: " + ", ".join(f"{k} {v:.0f} min" for k, v in m.items())
                      for num, m in minutes.items())
    body = (f"# Augmentation study\n\n`{command}` on {machine()} ({times}).\n\n"
            f"Real training data: the first N embedded street scenes (seed 0) at 32x32, of which the 95 % "
            f"training split is used. Generator: the quickstart recipe trained on those scenes only for "
            f"{args.generator_steps} steps; synthetic data: {args.per_mask} images per training mask (sample.py "
            f"defaults: UniPC 15 steps, guidance 1.5), exported in the Hub schema, and as many for new masks: "
            f"the training split of N scenes of scene seed 7 (layouts the real set does not hold). Segmenter: the project's small "
            f"segmenter, {args.segmenter_steps} steps of batch 16 for every cell; test: 500 held-out scenes of "
            f"scene seed 1000, scored on every pixel but unlabeled.\n\n{markdown(summary, rows)}\n"
            f"![test mIoU per training data](results_augmentation.png)\n\n"
            "How well the synthetic images follow their own masks, seen by the real-only segmenter (seed 0): "
            "its mIoU on them against the masks they were made from, beside its mIoU on the real test scenes.\n\n"
            "| real scenes | on real test scenes | on synthetic (training masks) | on synthetic (new masks) |\n"
            "|---|---|---|---|\n"
            + "".join(f"| {num} | {real_test(rows, num):.3f} | {fidelity[num, 'train']:.3f} | "
                      f"{fidelity[num, 'new']:.3f} |\n" for num in args.sizes))
    out = Path(__file__).with_name("results_augmentation.md")
    out.write_text(body)
    print(markdown(summary, rows))
    print(f"-> {out}, {figure}")


if __name__ == "__main__":
    main()
