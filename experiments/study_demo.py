"""The demo model's levers, measured with the strong instrument: what makes `make demo` good?

    python experiments/study_demo.py --arms baseline no-crop no-crop-2k [--seeds 0 1] [--masks 64]

Each arm is `make demo` (python -m sdm.cli.pipeline conf/pipeline/demo.yaml) with a few overrides
(`no-crop-2k` is the demo as shipped),
run into its own folder under --root with the data and the consistency segmenter shared
(the default instrument, cached per data and size). Every arm samples the same --masks
validation masks (x --per-mask, with --sampler at its default steps, s = 1.5) and is scored by
the same segmenter:
consistency ratio, the blur control, the other-mask baseline, the segmenter-feature distance
and 1 - MS-SSIM diversity. Results go to a ledger (results_demo.json, so an interrupted
study resumes) and a table (results_demo.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean, stdev

from _common import machine, markdown_table

REPO = Path(__file__).resolve().parents[1]
CROP = "data.augment.scale=[0.6,1.0]"  # the diffusion model's scale crop before this study
ARMS: dict[str, list[str]] = {  # overrides of conf/pipeline/demo.yaml as it is now (no crop, 2,000 steps)
    "baseline": [CROP, "train.trainer.max_steps=600"],  # the demo before: 32x32, 600 steps, scale crop
    "no-crop": ["train.trainer.max_steps=600"],
    "no-crop-2k": [],  # the demo now
    "no-crop-3k": ["train.trainer.max_steps=3000"],
    "no-crop-2k-wide": ["train.model.model_channels=48"],
    "64px-1.5k": ["data.size=[64,64]", "train.trainer.max_steps=1500"],
}
METRICS = ("real_miou", "blur_control_ratio", "consistency_ratio", "other_mask_miou", "segmenter_frechet_distance",
           "ms_ssim_diversity")


def run_arm(arm: str, seed: int, args: argparse.Namespace) -> dict:
    root = Path(args.root) / f"{arm}-seed{seed}-{args.sampler}-{args.masks}x{args.per_mask}"
    command = [sys.executable, "-m", "sdm.cli.pipeline", "conf/pipeline/demo.yaml", f"root={root}", *ARMS[arm],
               f"train.seed={seed}", "train.trainer.enable_progress_bar=false", f"sample.limit={args.masks}",
               f"sample.num_per_mask={args.per_mask}", f"sample.seed={seed}", f"sample.sampler={args.sampler}",
               "segmenter.segmenter.progress_bar=false",
               "evaluate.evaluation.fid=false", "evaluate.evaluation.lpips=false"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{arm} seed {seed} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    minutes = {line.split()[0]: float(line.split()[-1]) for line in done.stdout.splitlines()
               if line.split() and line.split()[0] in ("prepare", "segmenter", "train", "sample", "evaluate")
               and line.split()[-1].replace(".", "").isdigit()}
    report = json.loads((root / "samples" / "evaluation.json").read_text())
    sampler = report["settings"]["sampler"]
    return {"arm": arm, "seed": seed, "overrides": ARMS[arm], "train_minutes": minutes.get("train"),
            "sampler": f"{sampler['name']} {sampler['num_steps']}",
            "pipeline_minutes": round((time.perf_counter() - started) / 60, 2), "reliable": report["instrument"]["reliable"],
            "masks": report["counts"]["masks"], "images": report["counts"]["images"],
            **{key: report["metrics"].get(key) for key in METRICS}}


def spread(runs: list[dict], key: str, digits: int = 3) -> str:
    """Mean ± sd over the runs (the mean alone for one run)."""
    values = [row[key] for row in runs if row.get(key) is not None]
    if not values:
        return "n/a"
    return f"{mean(values):.{digits}f}" + (f" ± {stdev(values):.{digits}f}" if len(values) > 1 else "")


def table(ledger: list[dict]) -> str:
    rows = []
    for arm, sampler in dict.fromkeys((row["arm"], row["sampler"]) for row in ledger):
        runs = [row for row in ledger if (row["arm"], row["sampler"]) == (arm, sampler)]
        rows.append({"arm": arm, "sampler": sampler, "images": f"{runs[0]['masks']} x {runs[0]['images'] // runs[0]['masks']}",
                     "seeds": len(runs),
                     "train min": spread(runs, "train_minutes", 1) + (" (shared)" if any(r.get("shared") for r in runs) else ""),
                     "ceiling": spread(runs, "real_miou"), "blur control ratio": spread(runs, "blur_control_ratio", 2),
                     "consistency ratio": spread(runs, "consistency_ratio"),
                     "other-mask mIoU": spread(runs, "other_mask_miou"),
                     "seg. distance": spread(runs, "segmenter_frechet_distance", 2),
                     "1 - MS-SSIM": spread(runs, "ms_ssim_diversity")})
    return markdown_table(rows)


NOTES = """
## What each lever gave

- **The scale-crop augmentation, removed** (`data.augment.scale=[1.0,1.0]`): the largest single
  gain, 0.54 -> 0.81 at the same 600 steps. At 32x32 a random crop of 60-100 % of the area,
  resized back, is an up-sampling: the model learnt blurred photos with masks shifted against
  them, and sampled noisy textures. The segmenter had the same problem
  (results_segmenter.md).
- **Training steps** (600 -> 2,000, about 2 -> 7.7 minutes): 0.81 -> 0.97, and the segmenter
  distance 0.58 -> 0.07 (seed 0); the demo as shipped (DPM-Solver++ 25, 5 samples per mask)
  scores 0.958 ± 0.011 over three seeds.
- **Diversity against the target.** The issue asked for per-mask diversity no lower than the
  former demo's (0.32). At s = 1.5 the new demo gives 0.21: not met at the paper's guidance.
- **Sampler and guidance** (results_samplers.md, on the 2,000-step model): every solver at 15
  to 50 steps lands within the seed spread of DDPM-1000 on consistency; guidance s = 1.5 gives
  the best ratio, s = 1 trades it (0.90) for diversity (0.32 against 0.22).
- **Diversity** (1 - MS-SSIM between the samples of a mask) fell from 0.32 to about 0.2.
  results_diversity.md takes it apart: the former figure is neither grain (its samples hold less
  fine detail than real photos) nor variety of appearance (region colours vary less from sample to
  sample than in the new demo: 5.3 against 5.7 at s = 1.5); it is the former model drawing
  different shapes for one mask, which its consistency ratio of 0.53 also shows. s = 1 gives
  1 - MS-SSIM 0.30 at a ratio of 0.90 (64 masks x 5); no guidance of the new model reaches 0.32.
- Not needed for the 0.85 target at 32x32 and so not run to the end here: a wider network,
  64x64 (4x the cost per step), more steps.

## `make demo` from a fresh clone

`/usr/bin/time make demo` on a fresh clone (2026-12-04, AVX-512 BF16 / AMX machine, bf16):
12 min 3 s wall time, 175 % CPU, peak RSS 1.5 GiB. By stage: set-up of `.venv` about 1.6 min;
prepare 2,000 scenes at 32x32, 0.3 min; the consistency segmenter (1,500 steps), 1.6 min, ceiling
0.933 on its held-out split with blurred photos at 47 % of it; training (2,000 steps, four
validations), 7.5 min; 320 samples (64 masks x 5, DPM-Solver++ 25, s = 1.5), 0.9 min;
evaluation, 6 s. Its report: mIoU 0.908 against the samples' own masks and 0.057 against other
masks, the real photos 0.937 and the same photos blurred 0.424, so a consistency ratio of 0.97
against a blur control of 0.45 (segmenter Fréchet distance 0.060, 1 - MS-SSIM 0.21). The AVX2
class has not run this demo: its float32 training ran the former 600-step demo at about 1 step/s,
so expect about 35 minutes of training there.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=["baseline", "no-crop"], choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--masks", type=int, default=64)
    parser.add_argument("--per-mask", type=int, default=2)
    parser.add_argument("--sampler", default="dpmpp", choices=["dpmpp", "unipc", "ddim", "ddpm"])
    parser.add_argument("--root", default=os.environ.get("SDM_STUDY_DIR", "/tmp/study_demo"))
    parser.add_argument("--ledger", default=str(REPO / "experiments/results_demo.json"))
    args = parser.parse_args()
    ledger_path = Path(args.ledger)
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else []
    header = machine()
    for arm in args.arms:
        for seed in args.seeds:
            if any((row["arm"], row["seed"], row["masks"], row["sampler"].split()[0]) == (arm, seed, args.masks, args.sampler)
                   for row in ledger):
                continue
            row = run_arm(arm, seed, args)
            row["machine"] = header
            ledger.append(row)
            ledger_path.write_text(json.dumps(ledger, indent=1))
            print(table(ledger), flush=True)
    text = table(ledger)
    (ledger_path.with_suffix(".md")).write_text(
        "# The demo model's levers, judged by the strong instrument\n\n"
        "`python experiments/study_demo.py --arms <arm ...> --seeds <seed ...> --masks M --per-mask K --sampler S`; "
        "every run is a row of `results_demo.json` with its machine. Each arm is `make demo`'s pipeline with the "
        "overrides in the script's ARMS, M validation masks x K samples (the images column), s = 1.5, scored by the "
        "default consistency segmenter of the data (experiments/results_segmenter.md); mean ± sd over seeds "
        "(training and sampling seed). Training minutes are wall time on the 2 cores; a run marked `shared` in the "
        "ledger trained while other work ran and its time is not a measure.\n\n"
        + text + "\n" + NOTES)
    print(text)


if __name__ == "__main__":
    main()
