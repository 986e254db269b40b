"""Recipe study: what each of this project's departures from the paper's training recipe does.

    python experiments/study_recipe.py [--budgets 600 1800] [--seeds 0 1 2] [--masks 12] [--per-mask 2]
                                       [--root runs/study_recipe]

On the embedded street scenes at the quickstart's size (32x32), every arm trains
`train.py experiment=quickstart recipe=paper` with one departure switched on (and `fast`, all of
them), for each budget and seed; each run is sampled (UniPC 15, s = 1.5, the same validation
masks) and scored with the cached consistency segmenter: consistency ratio (mIoU of the samples
over that of the real photos, higher is better) and the segmenter-feature Frechet distance (lower
is better). Shared by every arm: the quickstart's lr 5e-4 and batch 16, and an EMA decay of 0.99:
its horizon (100 steps) scaled to these budgets as the paper's 0.9999 (10k steps) is to its runs
of 100k steps and more; 0.9999 or even 0.999 without warm-up would keep most of the random start
in a 600-step average (0.999^600 = 0.55), and every arm would be judged on noise. The quickstart's
own departures (v-prediction, warm-up) are switched off in COMMON, and each run's exported config
is checked to say what its arm claims. Every finished run's scores go to results_recipe.json
beside this script (commit it), keyed by its settings: a run already recorded there is not
trained again, so the study (about 3 CPU hours on 2 cores at the default budgets) can be spread
over several sessions or machines. Writes results_recipe.md from the runs asked for.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

from _common import machine
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from study_samplers import run_one

REPO = Path(__file__).resolve().parents[1]
# arm -> its overrides on top of recipe=paper (the paper's code: constant lr, no clipping, EMA
# without warm-up, eps prediction)
ARMS: dict[str, list[str]] = {
    "paper": [],
    "+ warm-up and cosine": ["optim.warmup_steps=50", "optim.schedule=cosine"],
    "+ clipping at 1.0": ["trainer.gradient_clip_val=1.0"],
    "+ EMA warm-up": ["ema.warmup=true"],
    "+ v-prediction": ["diffusion.prediction_type=v_prediction"],
    "fast (all four)": ["optim.warmup_steps=50", "optim.schedule=cosine", "trainer.gradient_clip_val=1.0",
                        "ema.warmup=true", "diffusion.prediction_type=v_prediction"],
}
COMMON = ["experiment=quickstart", "recipe=paper", "optim.lr=5e-4", "ema.decay=0.99", "data.size=[32,32]",
          "optim.warmup_steps=0", "diffusion.prediction_type=epsilon",  # the quickstart's departures, off
          "logger=none", "validation.every_n_steps=100000", "checkpoint.every_n_steps=100000"]


# the consistency segmenter that scores the runs (the default of conf/segmenter.yaml): rows scored by
# another instrument are other measurements, and the former default (`small`) wrote rows without a tag
INSTRUMENT = OmegaConf.load(REPO / "conf" / "segmenter.yaml").segmenter.arch


def row_key(budget: int, arm: str, seed: int, masks: int, per_mask: int) -> str:
    key = f"{budget} steps | {arm} | seed {seed} | {masks}x{per_mask} | {settings_digest(arm)}"
    return key if INSTRUMENT == "small" else f"{key} | instrument {INSTRUMENT}"


def run_name(arm: str) -> str:
    """A folder name Hydra's override grammar takes (no brackets, spaces or plus signs)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", arm).strip("_")


def settings_digest(arm: str) -> str:
    """Names the settings a ledger row was trained with: changed settings are trained again."""
    return hashlib.sha1(" ".join(COMMON + ARMS[arm]).encode()).hexdigest()[:8]


def check_config(run_dir: Path, overrides: list[str]) -> None:
    """Stop if the run's resolved config does not say what its overrides ask (an experiment's
    own values can win over a config group's)."""
    config = OmegaConf.load(run_dir / "export" / "config.yaml")
    last = {o.key_or_group: o for o in OverridesParser.create().parse_overrides(overrides)}  # the arm's win
    for override in last.values():
        if override.key_or_group in ("experiment", "recipe", "logger"):
            continue
        got = OmegaConf.select(config, override.key_or_group)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        if got != override.value():
            sys.exit(f"error: {run_dir} trained with {override.key_or_group}={got!r}, not {override.value()!r} as "
                     "its arm says (trained under older settings? delete the folder to train it again)")


def train(run_dir: Path, arm: list[str], steps: int, seed: int) -> None:
    """One training run, skipped when its export exists; stops the study with the log's tail."""
    if (run_dir / "export" / "ema.safetensors").is_file():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "train.log"
    command = [sys.executable, "train.py", *COMMON, *arm, f"trainer.max_steps={steps}", f"seed={seed}",
               f"run_dir={run_dir}", "ckpt_path=auto"]
    with open(log, "w") as handle:
        status = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT).returncode
    if status != 0:
        tail = "\n".join(log.read_text(errors="replace").replace("\r", "\n").splitlines()[-15:])
        sys.exit(f"error: training {run_dir} failed (exit {status}); log {log}:\n{tail}")


LEDGER = Path(__file__).with_name("results_recipe.json")


def recorded() -> dict[str, dict]:
    return json.loads(LEDGER.read_text()) if LEDGER.is_file() else {}


def record(key: str, row: dict) -> None:
    ledger = recorded()
    ledger[key] = row
    temporary = LEDGER.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(ledger, indent=1, sort_keys=True) + "\n")
    temporary.replace(LEDGER)


def summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results: dict[tuple[str, int], list[dict]], budgets: list[int]) -> str:
    head = "| arm | " + " | ".join(f"ratio @ {b} | distance @ {b}" for b in budgets) + " |\n"
    head += "|---|" + "---|---|" * len(budgets) + "\n"
    rows = []
    for arm in (arm for arm in ARMS if any((arm, budget) in results for budget in budgets)):
        cells = []
        for budget in budgets:
            runs = results.get((arm, budget), [])
            cells += [summary([r["ratio"] for r in runs]) if runs else "-",
                      summary([r["distance"] for r in runs]) if runs else "-"]
        rows.append(f"| {arm} | " + " | ".join(cells) + " |\n")
    return head + "".join(rows)


# paired comparisons: arm -> the arm it is measured against, seed by seed
BASELINES = {arm: "paper" for arm in ARMS if arm != "paper"} | {"fast (all four)": "+ v-prediction"}


def paired_table(results: dict[tuple[str, int], list[dict]], budgets: list[int]) -> str:
    """Differences within a seed: both runs share the initial weights and the batch order, so the
    difference is far less noisy than the spread of either arm over seeds."""
    head = "| arm vs baseline | " + " | ".join(f"Δ ratio @ {b} | Δ distance @ {b}" for b in budgets) + " |\n"
    head += "|---|" + "---|---|" * len(budgets) + "\n"
    rows = []
    for arm, baseline in BASELINES.items():
        if not any((arm, budget) in results and (baseline, budget) in results for budget in budgets):
            continue
        cells = []
        for budget in budgets:
            runs, baseline_runs = results.get((arm, budget), []), results.get((baseline, budget), [])
            for metric in ("ratio", "distance"):  # both lists hold the same seeds, in order
                cells.append(summary([a[metric] - b[metric] for a, b in zip(runs, baseline_runs, strict=True)])
                             if runs and baseline_runs else "-")
        rows.append(f"| {arm} vs {baseline} | " + " | ".join(cells) + " |\n")
    return head + "".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[600, 1800], help="training steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--masks", type=int, default=12)
    parser.add_argument("--per-mask", type=int, default=2)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "study_recipe")
    args = parser.parse_args()
    results: dict[tuple[str, int], list[dict]] = {}
    for budget in args.budgets:
        for seed in args.seeds:
            for arm in args.arms:
                key = row_key(budget, arm, seed, args.masks, args.per_mask)
                row = recorded().get(key)
                if row is None:
                    run_dir = args.root / INSTRUMENT / f"{budget}" / run_name(arm) / f"seed{seed}"
                    train(run_dir, ARMS[arm], budget, seed)
                    check_config(run_dir, COMMON + ARMS[arm])
                    row = run_one(str(run_dir), run_dir / "samples", "unipc", 15, 1.5, args.masks, args.per_mask,
                                  reuse=True)
                    record(key, row)
                results.setdefault((arm, budget), []).append(row)
                print(f"{budget} steps, seed {seed}, {arm}: ratio {row['ratio']:.3f}, distance {row['distance']:.4f}",
                      flush=True)
    command = ("python experiments/study_recipe.py --budgets " + " ".join(map(str, args.budgets)) + " --seeds "
               + " ".join(map(str, args.seeds)) + " --arms " + " ".join(f"'{arm}'" for arm in args.arms))
    body = (f"`{command}` on {machine()}.\n\nEvery arm: `{' '.join(COMMON)}` plus its overrides; "
            f"{args.masks} validation masks x {args.per_mask} samples (UniPC 15, s = 1.5); mean ± standard deviation "
            f"over seeds {', '.join(map(str, args.seeds))}; scored by the `{INSTRUMENT}` consistency segmenter "
            "(experiments/results_segmenter.md). Consistency ratio: higher is better; segmenter Fréchet "
            "distance: lower is better.\n\n" + table(results, args.budgets)
            + "\nThe same, as differences within a seed (mean ± standard deviation of the per-seed "
            "differences; the runs of one seed share initial weights and batch order):\n\n"
            + paired_table(results, args.budgets))
    out = Path(__file__).with_name("results_recipe.md")
    notes = ""
    if out.is_file() and "<!-- notes -->" in out.read_text():
        notes = out.read_text().split("<!-- notes -->", 1)[1]
    out.write_text(f"# Recipe study: the paper's recipe and each departure alone\n\n{body}\n<!-- notes -->{notes}")
    print(out.read_text())


if __name__ == "__main__":
    main()
