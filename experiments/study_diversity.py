"""How much of a model's per-mask diversity is variety, and how much is pixel noise?

    python experiments/study_diversity.py --former /tmp/study_demo/baseline-seed0/train \
        --current /tmp/study_demo/no-crop-2k-seed0/train [--masks 64] [--per-mask 5]

1 - MS-SSIM between the samples of one mask (the report's diversity) counts any pixel that
differs, so a model that paints grain on every sample looks diverse. This study samples the
same validation masks with the former demo model (600 steps, scale crop, UniPC 15) and the
current one (DPM-Solver++ 25 at s = 1, 1.25, 1.5) and measures, beside the consistency ratio:

- **1 - MS-SSIM**, as the report computes it;
- **grain**: the mean absolute high-pass (image minus its Gaussian blur, sigma 1) of the
  samples divided by that of the real photos of the same masks (1 = as much fine detail as real);
- **1 - MS-SSIM of the blurred samples** (the same blur): the diversity left once grain is gone;
- **colour variety**: for every class region of a mask (>= 8 pixels), the spread (standard
  deviation over samples) of the region's mean colour in 0-255 units, pixel-weighted over regions
  and masks. Grain averages out inside a region; a car painted red in one sample and blue in
  another does not.

Writes results_diversity.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _common import machine
from PIL import Image
from study_samplers import run_one
from torchvision.transforms.functional import gaussian_blur

from sdm.metrics.diversity import mean_pairwise, ssim_distance
from sdm.metrics.image_sets import from_sample_folder

MIN_REGION = 8


def as_tensor(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1


def blurred(images: torch.Tensor) -> torch.Tensor:
    return gaussian_blur(images, kernel_size=5, sigma=1.0)


def high_pass(images: torch.Tensor) -> float:
    return (images - blurred(images)).abs().mean().item()


def colour_variety(samples: torch.Tensor, label: np.ndarray) -> tuple[float, int]:
    """Pixel-weighted spread of region mean colours over the samples of one mask (0-255 units)."""
    total, weight = 0.0, 0
    ids = torch.from_numpy(label.astype(np.int64))
    for cls in ids.unique():
        region = ids == cls
        pixels = int(region.sum())
        if pixels < MIN_REGION:
            continue
        means = samples[:, :, region].mean(dim=2) * 127.5  # k x 3, 0-255 units
        total += means.std(dim=0).mean().item() * pixels
        weight += pixels
    return total, weight


def measure(folder: Path) -> dict:
    image_set = from_sample_folder(folder)
    groups, real, variety, weight = [], [], 0.0, 0
    for entry in image_set.entries:
        samples = torch.stack([as_tensor(path) for path in entry.samples])
        groups.append(samples)
        if entry.real is not None:
            real.append(as_tensor(entry.real))
        part, pixels = colour_variety(samples, entry.label)
        variety, weight = variety + part, weight + pixels
    generated_grain = sum(high_pass(g) for g in groups) / len(groups)
    real_grain = high_pass(torch.stack(real)) if real else float("nan")
    return {"ms_ssim": mean_pairwise(groups, ssim_distance),
            "ms_ssim_blurred": mean_pairwise([blurred(g) for g in groups], ssim_distance),
            "grain": generated_grain / real_grain, "variety": variety / weight}


FINDINGS = """
## What it shows (seed 0, 64 x 5)

- The former demo's higher 1 - MS-SSIM (0.33 against 0.21 at s = 1.5) is not grain: its samples
  carry *less* fine detail than real photos (grain 0.77) and blurring removes about the same share of
  its diversity as of the current model's. It is layout: with a consistency ratio of 0.53 its samples
  follow the mask loosely, so two samples of one mask draw different shapes, which MS-SSIM counts.
- Variety of appearance, the diversity a dataset grower wants (a region painted differently from
  sample to sample), is higher in the current demo at every guidance scale: 5.7 (s = 1.5) to 6.7
  (s = 1) against 5.3.
- Lower guidance buys 1 - MS-SSIM at the cost of consistency: s = 1 gives 0.30 at a ratio of 0.90,
  still below the former 0.33; no setting of the current model reaches the former figure on that
  measure, because the former figure counts disagreement with the mask.
- s = 1.5 stays: the best consistency ratio (0.97), grain as real (0.99), more colour variety than
  the former demo.
"""

ARMS = [("former demo (600 steps, crop)", "former", "unipc", 15, 1.5),
        *[("current demo (2,000 steps)", "current", "dpmpp", 25, scale) for scale in (1.0, 1.25, 1.5)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--former", required=True, help="run folder of the former demo model")
    parser.add_argument("--current", required=True, help="run folder of the current demo model")
    parser.add_argument("--masks", type=int, default=64)
    parser.add_argument("--per-mask", type=int, default=5)
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    rows = []
    for label, which, sampler, steps, scale in ARMS:
        weights = getattr(args, which)
        out = Path(weights) / "diversity" / f"{sampler}-{steps}-s{scale:g}-{args.masks}x{args.per_mask}"
        scores = run_one(weights, out, sampler, steps, scale, args.masks, args.per_mask, reuse=args.reuse)
        rows.append({"model": label, "sampler": f"{sampler} {steps}", "s": scale, "ratio": scores["ratio"],
                     **measure(out)})
        print(rows[-1], flush=True)
    head = ("| model | sampler | s | consistency ratio | 1 - MS-SSIM | grain vs real | 1 - MS-SSIM, blurred | "
            "colour variety |\n|---|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {r['model']} | {r['sampler']} | {r['s']:g} | {r['ratio']:.3f} | {r['ms_ssim']:.3f} | "
                   f"{r['grain']:.2f} | {r['ms_ssim_blurred']:.3f} | {r['variety']:.1f} |\n" for r in rows)
    out = Path(__file__).with_name("results_diversity.md")
    out.write_text(f"# Diversity: variety or grain?\n\n`python experiments/study_diversity.py --former {args.former} "
                   f"--current {args.current} --masks {args.masks} --per-mask {args.per_mask}` on {machine()}.\n\n"
                   f"{args.masks} validation masks x {args.per_mask} samples each, seed 0, fp32, scored by the "
                   "default consistency segmenter of the data.\n\n" + head + body + FINDINGS)
    print(head + body)


if __name__ == "__main__":
    main()
