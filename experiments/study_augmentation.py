"""Augmentation study: do synthetic images make a segmenter better, and which techniques do it?

    python experiments/study_augmentation.py                      # the whole study, resumable
    python experiments/study_augmentation.py --sizes 25 100 --arm-sizes 100 --arms "mixed, filtered" --seeds 0

Every stage is one of the project's commands, skipped when its output is complete, so the same
command continues a stopped study. The protocol:

- Real data: the first N embedded street scenes (seed 0) at 32x32, their 95 % training split.
  Test: 500 held-out scenes of scene seed 1000, which no network here sees in training.
- Downstream segmenter: the strong instrument's network (`segmenter.arch=unet`, width 32), under
  one rule for every arm: it sees the real rows as often as the real-only run does. Real only:
  S steps of batch 16 (`--steps`); a synthetic share r of every epoch: S / (1 - r) steps;
  pre-training: S steps on the synthetic rows alone, then S on the real ones from those weights.
  "real, 2S steps" checks that S is enough: the mixed arms' extra steps do not explain a gain.
- Learning curve: real only at every N of `--sizes`, every seed.
- Per N of `--arm-sizes`: a generator (`experiment=quickstart`, the demo recipe) trained on those
  N scenes only; synthetic sets drawn from its training masks (`sample.py masks=train`), exported
  plain or with noisy pixels unlabeled by the seed-0 real-only segmenter (`sdm-export --filter`), and
  with hardness re-sampling, pasted objects, 1 or 20 images per mask; masks of other scenes
  (`mask_source`) are the upper bound a user without new layouts cannot reach.

Writes results_augmentation.md, results_augmentation.json (every run) and results_augmentation.png
(the learning curve with every arm on it); `--name` gives them another stem.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _augmentation_report import (
    REAL,
    arms_table,
    curve_table,
    learning_curve,
    plot_curve,
    runs_table,
)
from _common import machine

from sdm.core.atomic import write_atomically, write_json

REPO = Path(__file__).resolve().parents[1]
TEST = "{scenes:{seed:1000,num:500}}"
SIZE = "[32,32]"

# sampling name -> sample.py overrides ({seg}: the real-only segmenter of the same N, seed 0)
SAMPLINGS = {
    "five": ["num_per_mask=5"],
    "one": ["num_per_mask=1"],
    "twenty": ["num_per_mask=20"],
    "hard": ["hardness={most:9,segmenter:'{seg}'}"],
    "paste": ["num_per_mask=5", "mask_variation=[paste]"],
    "new": ["num_per_mask=5", "mask_source={scenes:{seed:7}}"],
}


@dataclass(frozen=True)
class Arm:
    sampling: str | None = None  # which images (None: real only)
    filtered: bool = False  # noisy pixels unlabeled in the export
    share: float = 0.0  # synthetic share of every epoch
    pretrain: str | None = None  # the name of its first stage (synthetic alone, S steps), then S on real
    steps_factor: float = 1.0  # of S, for real-only arms

    def steps(self, base: int) -> int:
        return round(base * self.steps_factor / (1.0 - self.share))


ARMS = {  # in the order they run: the techniques first, then the schedules and counts
    "real, 2S steps": Arm(steps_factor=2.0),
    "mixed": Arm("five", share=0.5),
    "mixed, filtered": Arm("five", filtered=True, share=0.5),
    "mixed, filtered, hard masks more": Arm("hard", filtered=True, share=0.5),
    "mixed, filtered, pasted objects": Arm("paste", filtered=True, share=0.5),
    "synthetic, then real, filtered": Arm("five", filtered=True, pretrain="synthetic only, filtered"),
    "mixed, filtered, new masks (upper bound)": Arm("new", filtered=True, share=0.5),
    "mixed 1:3, filtered": Arm("five", filtered=True, share=0.25),
    "mixed 3:1, filtered": Arm("five", filtered=True, share=0.75),
    "mixed, filtered, 1 per mask": Arm("one", filtered=True, share=0.5),
    "mixed, filtered, 20 per mask": Arm("twenty", filtered=True, share=0.5),
}
STAGES = {arm.pretrain: name for name, arm in ARMS.items() if arm.pretrain}  # first stage -> its arm


def run(command: list[str], log: Path) -> float:
    """Run one stage with its output in `log`; stop the study with the log's tail if it fails.
    Its wall time goes into `minutes.json` beside the logs, under the log's name."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as handle:
        handle.write(" ".join(command) + "\n\n")
        handle.flush()
        status = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT).returncode
    if status != 0:
        tail = "\n".join(log.read_text(errors="replace").replace("\r", "\n").splitlines()[-15:])
        sys.exit(f"error: {' '.join(command[:3])} ... failed (exit {status}); log {log}:\n{tail}")
    seconds = time.perf_counter() - started
    ledger = log.parent.parent / "minutes.json"
    minutes = json.loads(ledger.read_text()) if ledger.is_file() else {}
    minutes[log.stem] = round(seconds / 60, 2)
    write_json(ledger, minutes)
    return seconds


def data_overrides(num: int) -> list[str]:
    return ["data=scenes", f"data.size={SIZE}", f"data.scenes.num={num}"]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


NAMES = [REAL, *ARMS, *STAGES]
assert len({slug(n) for n in NAMES}) == len(NAMES), "two arms would share a results folder"


def size_folders(root: Path) -> list[Path]:
    """The study's n<N> folders, by N."""
    return sorted((f for f in root.glob("n*") if f.name[1:].isdigit()), key=lambda f: int(f.name[1:]))


def trained(cache: Path, seed: int, steps: int, export: Path | None = None, share: float | None = None,
            init: Path | None = None) -> Path | None:
    """The finished (trained and tested) segmenter of these settings in a cache folder, if any: one
    left by an arm whose settings were since changed does not count."""
    for path in sorted(cache.glob("*/segmenter.json")):
        info = json.loads(path.read_text())
        extra = info.get("extra") or {}
        found = (info.get("seed"), info.get("steps"), extra.get("path"), extra.get("ratio"), info.get("init"))
        wanted = (seed, steps, str(export) if export else None, share, str(init.resolve()) if init else None)
        if found == wanted and "test" in info:
            return path.parent
    return None


def segmenter(folder: Path, arm: str, seed: int, steps: int, export: Path | None = None, share: float | None = None,
              init: Path | None = None) -> Path:
    """Train and test one downstream segmenter (skipped when done); returns its folder."""
    cache = folder / "segmenters" / slug(arm)
    if (done := trained(cache, seed, steps, export, share, init)) is not None:
        return done
    extra = [f"data.extra={export}", f"data.extra_ratio={share:g}"] if export else []
    extra += [f"segmenter.init={init}"] if init else []
    run([sys.executable, "-m", "sdm.cli.segmenter", *data_overrides(int(folder.name[1:])), f"seed={seed}",
         f"segmenter.max_steps={steps}", "segmenter.val_every=500", "segmenter.progress_bar=false",
         f"segmenter.test={TEST}", f"segmenter.cache_dir={cache}", *extra],
        folder / "logs" / f"segmenter_{slug(arm)}_seed{seed}.log")
    done = trained(cache, seed, steps, export, share, init)
    assert done is not None, f"the segmenter of {arm}, seed {seed} left no result in {cache}"
    return done


def generator(folder: Path, steps: int) -> Path:
    train = folder / "generator"
    if not (train / "export" / "ema.safetensors").is_file():
        run([sys.executable, "train.py", "experiment=quickstart", *data_overrides(int(folder.name[1:])),
             f"trainer.max_steps={steps}", "logger=none", f"run_dir={train}", "ckpt_path=auto"],
            folder / "logs" / "generator.log")
    return train


def synthetic_set(folder: Path, sampling: str, filtered: bool, filter_segmenter: Path, generator_steps: int) -> Path:
    """The export of one sampling, plain or filtered (both from the same images)."""
    samples = folder / "samples" / sampling
    plain = samples / "hf"
    if not (plain / "sdm_export.json").is_file():
        overrides = [o.replace("{seg}", str(filter_segmenter)) for o in SAMPLINGS[sampling]]
        run([sys.executable, "sample.py", f"weights={generator(folder, generator_steps)}", "masks=train", *overrides, "batch_size=64",
             f"out_dir={samples}", "export=true", f"export_dir={plain}"], folder / "logs" / f"sample_{sampling}.log")
    if not filtered:
        return plain
    out = samples / "hf_filtered"
    if not (out / "sdm_export.json").is_file():
        run([sys.executable, "-m", "sdm.cli.export", str(samples), "--out", str(out), "--filter", str(filter_segmenter)],
            folder / "logs" / f"export_{sampling}_filtered.log")
    return out


def study_arm(folder: Path, name: str, seeds: list[int], base: int, generator_steps: int) -> None:
    arm = ARMS[name]
    filter_segmenter = segmenter(folder, REAL, 0, base)
    if arm.sampling is None:
        for seed in seeds:
            segmenter(folder, name, seed, arm.steps(base))
        return
    export = synthetic_set(folder, arm.sampling, arm.filtered, filter_segmenter, generator_steps)
    for seed in seeds:
        if arm.pretrain:
            start = segmenter(folder, arm.pretrain, seed, base, export, 1.0)
            segmenter(folder, name, seed, base, init=start)
        else:
            segmenter(folder, name, seed, arm.steps(base), export, arm.share)


def collect(root: Path, base: int) -> list[dict]:
    """Every finished downstream segmenter of the study as a run. A fine-tuned one counts its
    pre-training's steps and time too; a run left by changed settings of its arm is left out."""
    names = {slug(a): a for a in NAMES}
    runs, seen = [], set()
    for folder in size_folders(root):
        for info_file in sorted(folder.glob("segmenters/*/*/segmenter.json")):
            info, arm = json.loads(info_file.read_text()), names.get(info_file.parent.parent.name)
            if arm is None or "test" not in info:
                continue
            spec = ARMS.get(arm)
            share = None if spec is None or spec.pretrain or spec.sampling is None else spec.share
            expected = base if arm == REAL or arm in STAGES or (spec and spec.pretrain) else spec.steps(base)
            if info["steps"] != expected or (share is not None and (info.get("extra") or {}).get("ratio") != share):
                continue
            steps, seconds = info["steps"], info["seconds"]
            if info.get("init"):
                stage = json.loads((Path(info["init"]) / "segmenter.json").read_text())
                steps, seconds = steps + stage["steps"], seconds + stage["seconds"]
            key = (int(folder.name[1:]), arm, info["seed"])
            if key in seen:
                raise SystemExit(f"error: two finished runs of {key} under {info_file.parent.parent}; remove the stale one")
            seen.add(key)
            runs.append({"num": key[0], "arm": arm, "seed": info["seed"], "test_miou": info["test"]["miou"],
                         "val_miou": info["real_val_miou"], "steps": steps, "seconds": seconds,
                         "synthetic_rows": (info.get("extra") or {}).get("rows")})
    return runs


def synthetic_details(root: Path) -> dict[str, dict]:
    """Per arm: synthetic images per size, from the exports' records."""
    details: dict[str, dict] = {}
    for name, arm in ARMS.items():
        if arm.sampling is None:
            continue
        images = {}
        for folder in size_folders(root):
            export = folder / "samples" / arm.sampling / ("hf_filtered" if arm.filtered else "hf") / "sdm_export.json"
            if export.is_file():
                record = json.loads(export.read_text())
                share = (record.get("filter") or {}).get("mean_filtered_share")
                images[int(folder.name[1:])] = f"{record['rows']}" + (f" ({share:.0%} px unlabeled)" if share else "")
        details[name] = {"images": images}
    for stage, arm_name in STAGES.items():
        details[stage] = details.get(arm_name, {})
    return details


def label_fidelity(root: Path, base: int, arms: list[str]) -> str:
    """How far each synthetic set the arms used follows its masks, seen by a real-only segmenter
    of the same N: its mIoU on the images against their own masks (filtered sets: on the pixels
    the filter kept), beside its mIoU on the real test scenes. Seed 1 where it exists, since seed 0
    did the filtering and chose the hard masks."""
    from sdm.core.configs import compose
    from sdm.data.mixing import extra_source_cfg
    from sdm.segmenter.cache import load_segmenter
    from sdm.segmenter.held_out import held_out_scores

    used = {(ARMS[a].sampling, ARMS[a].filtered) for a in arms if a in ARMS and ARMS[a].sampling}
    lines = ["| real scenes | synthetic set | images | judged by | on them | on the real test scenes |",
             "|---|---|---|---|---|---|"]
    for folder in size_folders(root):
        cache = folder / "segmenters" / slug(REAL)
        seed = 1 if trained(cache, 1, base) else 0
        real = trained(cache, seed, base)
        if real is None:
            continue
        network, info = load_segmenter(real)
        exports = [folder / "samples" / sampling / ("hf_filtered" if filtered else "hf") / "sdm_export.json"
                   for sampling, filtered in sorted(used)]
        for export in [e for e in exports if e.is_file()]:
            cfg = compose("segmenter", [*data_overrides(int(folder.name[1:])), f"data.extra={export.parent}"])
            on_them = held_out_scores(network, extra_source_cfg(cfg.data))["miou"]
            name = export.parents[1].name + (", filtered" if export.parent.name.endswith("filtered") else "")
            lines.append(f"| {folder.name[1:]} | {name} | {json.loads(export.read_text())['rows']} | seed {seed} | "
                         f"{on_them:.3f} | {info['test']['miou']:.3f} |")
    return "\n".join(lines) + "\n"


def wall_times(root: Path, arms: list[str]) -> str:
    """Minutes each arm cost at each size, beyond the real-only curve: the generator (trained once
    per size and shared by every arm), its sampling and filtering (shared by the arms that use the
    same images), and its segmenters over all seeds (a fine-tuned arm with its pre-training)."""
    lines = ["| real scenes | arm | generator (shared) | sampling | filtered export | segmenters, all seeds |",
             "|---|---|---|---|---|---|"]
    for folder in size_folders(root):
        ledger = folder / "minutes.json"
        minutes = json.loads(ledger.read_text()) if ledger.is_file() else {}
        for name in arms:
            arm = ARMS.get(name)
            infos = [json.loads(p.read_text()) for p in (folder / "segmenters" / slug(name)).glob("*/segmenter.json")]
            if not infos:
                continue
            if arm is not None and arm.pretrain:
                infos += [json.loads(p.read_text())
                          for p in (folder / "segmenters" / slug(arm.pretrain)).glob("*/segmenter.json")]
            sampling = arm.sampling if arm is not None else None
            cells = [minutes.get("generator") if sampling else None, minutes.get(f"sample_{sampling}") if sampling
                     else None, minutes.get(f"export_{sampling}_filtered") if arm is not None and arm.filtered else None]
            shown = ["-" if c is None else f"{c:.1f}" for c in cells]
            lines.append(f"| {folder.name[1:]} | {name} | {' | '.join(shown)} | "
                         f"{sum(i['seconds'] for i in infos) / 60:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200, 400, 2000],
                        help="real training scenes of the learning curve")
    parser.add_argument("--arm-sizes", type=int, nargs="+", default=[100, 2000], help="sizes the arms run at")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), metavar="ARM",
                        help=f"arms to run (default: all): {list(ARMS)}")
    parser.add_argument("--larger-arms", nargs="+", choices=list(ARMS), metavar="ARM",
                        help="arms at the arm sizes after the first (default: --arms): the techniques are compared "
                             "at the first size, the larger ones check that the best does no harm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="segmenter seeds")
    parser.add_argument("--steps", type=int, default=1500, help="S: real-only segmenter steps")
    parser.add_argument("--generator-steps", type=int, default=2000, help="the generator's (the demo recipe's)")
    parser.add_argument("--root", default="runs/study_augmentation")
    parser.add_argument("--results", default=str(Path(__file__).parent), help="folder of the results files")
    parser.add_argument("--name", default="results_augmentation",
                        help="their name before .md/.json/.png: a part of the study run apart keeps its own")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    record, settings = root / "settings.json", {"steps": args.steps, "generator_steps": args.generator_steps}
    if record.is_file() and json.loads(record.read_text()) != settings:
        sys.exit(f"error: {root} was made with {json.loads(record.read_text())}, not {settings}; pass another --root")
    root.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings))
    started = time.perf_counter()
    for num in sorted(set(args.sizes) | set(args.arm_sizes)):
        for seed in args.seeds:
            segmenter(root / f"n{num}", REAL, seed, args.steps)
        print(f"{num} real scenes: real only done ({(time.perf_counter() - started) / 60:.0f} min)", flush=True)
    for num in args.arm_sizes:
        for name in args.arms if num == args.arm_sizes[0] or not args.larger_arms else args.larger_arms:
            study_arm(root / f"n{num}", name, args.seeds, args.steps, args.generator_steps)
            print(f"{num} real scenes: {name} done ({(time.perf_counter() - started) / 60:.0f} min)", flush=True)
    write_results(root, args)


NOTES = "<!-- notes: kept as written -->"


def write_results(root: Path, args: argparse.Namespace) -> None:
    runs = collect(root, args.steps)
    order = [a for a in ARMS if a in args.arms] + [stage for stage, arm in STAGES.items() if arm in args.arms]
    here = Path(args.results)
    here.mkdir(parents=True, exist_ok=True)
    write_json(here / f"{args.name}.json", {"machine": machine(), "runs": runs})
    plot_curve(runs, order, here / f"{args.name}.png")
    curve = learning_curve(runs)
    room = (f"The room between 100 real scenes and {max(curve)}: {curve[max(curve)] - curve[100]:+.3f} mIoU.\n\n"
            if 100 in curve and max(curve) > 100 else "")
    command = " ".join(["python experiments/study_augmentation.py", "--sizes", *map(str, args.sizes), "--arm-sizes",
                        *map(str, args.arm_sizes), "--seeds", *map(str, args.seeds), f"--steps {args.steps}",
                        f"--generator-steps {args.generator_steps}"]
                       + (["--arms", *(f'"{a}"' for a in args.arms)] if list(args.arms) != list(ARMS) else [])
                       + (["--larger-arms", *(f'"{a}"' for a in args.larger_arms)] if args.larger_arms else [])
                       + ([f"--name {args.name}"] if args.name != "results_augmentation" else []))
    body = (f"# Augmentation study\n\n`{command}` on {machine()}. The protocol is in the "
            f"script's docstring; the figures below are what it wrote.\n\n## Real only: the learning curve\n\n"
            f"{curve_table(runs)}\n{room}![learning curve with the arms]({args.name}.png)\n\n"
            f"## The arms, paired with real only of the same seed\n\n{arms_table(runs, order, synthetic_details(root))}\n"
            f"## How well the synthetic images follow their masks\n\n{label_fidelity(root, args.steps, args.arms)}\n"
            f"## Wall time per arm (minutes)\n\n{wall_times(root, [a for a in order if a not in STAGES])}\n"
            f"## Every run\n\n{runs_table(runs, order)}")
    target = here / f"{args.name}.md"
    if target.is_file() and NOTES in target.read_text():  # what people wrote below the figures stays
        body += "\n" + NOTES + target.read_text().split(NOTES, 1)[1]
    write_atomically(target, lambda tmp: tmp.write_text(body))
    print(body)


if __name__ == "__main__":
    main()
