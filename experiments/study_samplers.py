"""Sampler and guidance study: which sampler and step count should sample.py use by default?

    python experiments/study_samplers.py --weights runs/demo/train [--masks 12] [--per-mask 2]

On a trained model (the demo's, by default) it generates for the same validation masks with
the paper's 1000-step DDPM and with DDIM, DPM-Solver++ and UniPC at 10 / 15 / 25 steps (s = 1.5),
then with the chosen sampler at guidance 1, 1.5, 2 and 3, and evaluates each folder with the
cached segmenter of the model's data: consistency ratio, the segmenter-feature Fréchet
distance, 1 - MS-SSIM diversity and seconds per image. The default is the fastest setting
within 5 % of DDPM-1000 on both consistency and distance. Writes results_samplers.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _common import machine
from omegaconf import OmegaConf

from sdm.core.configs import compose
from sdm.generation import generate
from sdm.metrics.evaluation import evaluate_set
from sdm.metrics.image_sets import from_sample_folder

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = [("ddpm", 1000), ("ddim", 50), ("ddim", 25), *[(name, n) for name in ("dpmpp", "unipc", "ddim")
                                                           for n in (10, 15)], ("dpmpp", 25), ("unipc", 25)]
SCALES = (1.0, 1.5, 2.0, 3.0)
TOLERANCE = 0.05


def run_one(weights: str, out: Path, sampler: str, steps: int, scale: float, masks: int, per_mask: int,
            seed: int = 0, reuse: bool = False) -> dict:
    cfg = compose("sample", [f"weights={weights}", f"sampler={sampler}", f"sampler.num_steps={steps}",
                                       f"seed={seed}",
                                       f"sampler.guidance_scale={scale}", f"limit={masks}",
                                       f"num_per_mask={per_mask}", "precision=fp32", f"batch_size={masks * per_mask}",
                                       f"out_dir={out}", "evaluation.progress=false", "evaluation.fid=false",
                                       "evaluation.lpips=false", "evaluation.tensorboard=false"])
    done = out / "manifest.json"
    if reuse and done.is_file() and json.loads(done.read_text()).get("complete"):
        seconds = json.loads(done.read_text())["seconds"]  # the time of the generation that made them
    else:
        shutil.rmtree(out, ignore_errors=True)  # a fresh generation, so the time is the sampling's
        started = time.perf_counter()
        generate(cfg)
        seconds = time.perf_counter() - started
    report = evaluate_set(from_sample_folder(out), out, cfg.evaluation)
    m = report["metrics"]
    images = report["counts"]["images"]
    return {"sampler": sampler, "steps": steps, "guidance": scale, "seed": seed, "miou": m.get("miou"),
            "ratio": m.get("consistency_ratio"), "other": m.get("other_mask_miou"),
            "distance": m.get("segmenter_frechet_distance"), "diversity": m.get("ms_ssim_diversity"),
            "s_per_image": seconds / images}


def close_enough(row: dict, reference: dict, distance_tolerance: float) -> bool:
    """Within 5 % of the reference on consistency ratio and diversity, and on distance within
    the larger of 5 % and what the seeds alone move it by."""
    return (row["ratio"] >= (1 - TOLERANCE) * reference["ratio"]
            and row["diversity"] >= (1 - TOLERANCE) * reference["diversity"]
            and row["distance"] <= (1 + distance_tolerance) * reference["distance"])


def seed_spread(first: dict, repeats: list[dict], key: str) -> float:
    return max(abs(r[key] - first[key]) / abs(first[key]) for r in repeats)


def noise_note(first: dict, repeats: list[dict]) -> str:
    return (f"Between seeds the same setting moves by up to {seed_spread(first, repeats, 'ratio'):.1%} in "
            f"consistency ratio and {seed_spread(first, repeats, 'distance'):.1%} in distance: differences smaller "
            "than that are not resolved by this many images.")


def table(rows: list[dict]) -> str:
    head = "| sampler | steps | s | seed | mIoU | ratio | other-mask mIoU | seg. Fréchet | 1-MS-SSIM | s/image |\n"
    head += "|---|---|---|---|---|---|---|---|---|---|\n"
    return head + "".join(
        f"| {r['sampler']} | {r['steps']} | {r['guidance']:g} | {r['seed']} | {r['miou']:.3f} | {r['ratio']:.3f} | "
        f"{r['other']:.3f} | {r['distance']:.4f} | {r['diversity']:.3f} | {r['s_per_image']:.2f} |\n" for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="runs/demo/train")
    parser.add_argument("--masks", type=int, default=12)
    parser.add_argument("--per-mask", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="keep complete folders of an earlier run (and their times)")
    args = parser.parse_args()
    root = Path(args.weights) / "study"
    rows = []
    for sampler, steps in SAMPLERS:
        rows.append(run_one(args.weights, root / f"{sampler}-{steps}-s1.5", sampler, steps, 1.5, args.masks,
                            args.per_mask, reuse=args.reuse))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    reference = rows[0]
    # the same setting with other noise: how much of a difference the sample size can resolve
    default = next(r for r in rows if (r["sampler"], r["steps"]) == ("ddim", 50))
    repeats = [run_one(args.weights, root / f"ddim-50-s1.5-seed{seed}", "ddim", 50, 1.5, args.masks, args.per_mask,
                       seed=seed, reuse=args.reuse) for seed in (1, 2)]
    distance_tolerance = max(TOLERANCE, seed_spread(default, repeats, "distance"))
    fits = [r for r in rows[1:] if close_enough(r, reference, distance_tolerance)]
    chosen = min(fits, key=lambda r: r["s_per_image"]) if fits else None
    best = chosen or min(rows[1:], key=lambda r: r["distance"])
    guided = [run_one(args.weights, root / f"{best['sampler']}-{best['steps']}-s{scale:g}", best["sampler"],
                      best["steps"], scale, args.masks, args.per_mask, reuse=args.reuse) for scale in SCALES]
    rule = (f"within {TOLERANCE:.0%} of DDPM-1000 on consistency ratio and diversity, and on distance within "
            f"{distance_tolerance:.1%} (the larger of {TOLERANCE:.0%} and the seed spread below)")
    verdict = (f"Chosen default: **{chosen['sampler']} {chosen['steps']} steps**, the fastest setting {rule}; "
               f"{reference['s_per_image'] / chosen['s_per_image']:.0f}x faster than DDPM-1000." if chosen else
               f"No setting came {rule}; the closest by distance was {best['sampler']} {best['steps']}.")
    body = (f"Weights: `{args.weights}`; {args.masks} validation masks x {args.per_mask} samples; fp32; "
            "segmenter: the cached default of the model's data.\n\n## Samplers at s = 1.5\n\n" + table(rows) +
            f"\n{verdict}\n\n## Guidance with {best['sampler']} {best['steps']}\n\n" + table(guided) +
            "\n## The noise floor: DDIM 50 at s = 1.5 with other seeds\n\n" + table([default, *repeats]) +
            f"\n{noise_note(default, repeats)}\n")
    out = Path(__file__).with_name("results_samplers.md")
    out.write_text(f"# Sampler and guidance study\n\n`python experiments/study_samplers.py --weights {args.weights}` "
                   f"on {machine()}.\n\n{body}")
    print(OmegaConf.to_yaml({"chosen": chosen}))


if __name__ == "__main__":
    main()
