"""The augmentation study's numbers: paired differences within a seed, what an arm is worth in
real scenes (read off the real-only learning curve), and its tables and figure.

Kept apart from the study's stages so the arithmetic can be tested without training anything.
A run is a dict with at least `num` (real scenes), `arm`, `seed` and `test_miou`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

REAL = "real"  # the arm every other arm is paired with


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def scores(runs: list[dict], num: int, arm: str) -> dict[int, float]:
    """seed -> test mIoU of one arm at one size."""
    return {r["seed"]: r["test_miou"] for r in runs if r["num"] == num and r["arm"] == arm}


def paired_differences(runs: list[dict], num: int, arm: str) -> dict[int, float]:
    """seed -> the arm's test mIoU minus the real-only one of the same seed and size. A seed fixes
    the segmenter's starting weights and the order of the real rows, so the part of the noise they
    cause is shared by the pair (a mixed arm interleaves synthetic rows, so not all of it)."""
    real, other = scores(runs, num, REAL), scores(runs, num, arm)
    return {seed: other[seed] - real[seed] for seed in sorted(other) if seed in real}


def learning_curve(runs: list[dict]) -> dict[int, float]:
    """Real scenes -> mean real-only test mIoU over seeds."""
    sizes = sorted({r["num"] for r in runs if r["arm"] == REAL})
    return {num: statistics.mean(scores(runs, num, REAL).values()) for num in sizes}


def worth_in_real_scenes(curve: dict[int, float], value: float) -> str:
    """How many real scenes reach `value` on the real-only curve, interpolated linearly in log N
    between the first pair of sizes that brackets it; '< N' or '> N' outside the curve."""
    sizes = sorted(curve)
    if not sizes:
        return "-"
    exact = [num for num in sizes if math.isclose(curve[num], value, abs_tol=1e-12)]
    if exact:
        return f"{exact[0]}"
    for low, high in zip(sizes, sizes[1:], strict=False):
        a, b = curve[low], curve[high]
        if min(a, b) <= value <= max(a, b):
            share = (value - a) / (b - a)
            return f"{math.exp(math.log(low) + share * (math.log(high) - math.log(low))):.0f}"
    return f"< {sizes[0]}" if value < min(curve.values()) else f"> {sizes[-1]}"  # outside the whole curve


def curve_table(runs: list[dict]) -> str:
    """The real-only learning curve: mean, spread and range over seeds per size."""
    lines = ["| real scenes | seeds | test mIoU mean | sd | min - max |", "|---|---|---|---|---|"]
    for num in sorted({r["num"] for r in runs if r["arm"] == REAL}):
        values = list(scores(runs, num, REAL).values())
        mean, sd = mean_sd(values)
        lines.append(f"| {num} | {len(values)} | {mean:.3f} | {sd:.3f} | {min(values):.3f} - {max(values):.3f} |")
    return "\n".join(lines) + "\n"


def arms_table(runs: list[dict], arms: Sequence[str], details: dict[str, dict]) -> str:
    """Per size and arm: test mIoU, the paired difference to real only, and its worth in real scenes.
    `details[arm]` may give `images` (synthetic rows per size: {num: rows}), `steps` and `minutes`."""
    curve = learning_curve(runs)
    lines = ["| real scenes | arm | synthetic images | steps | seeds | test mIoU mean ± sd | "
             "paired difference to real ± sd (points) | worth (real scenes) | minutes per seed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for num in sorted({r["num"] for r in runs if r["arm"] != REAL}):
        for arm in [REAL, *arms]:
            values = scores(runs, num, arm)
            if not values:
                continue
            mean, sd = mean_sd(list(values.values()))
            spread = f" ± {sd:.3f}" if len(values) > 1 else ""
            extra = details.get(arm, {})
            images = (extra.get("images") or {}).get(num, "-")
            steps = next(r.get("steps", "-") for r in runs if r["num"] == num and r["arm"] == arm)
            minutes = statistics.mean(r.get("seconds", 0) / 60 for r in runs if r["num"] == num and r["arm"] == arm)
            if arm == REAL:
                paired, worth = "-", worth_in_real_scenes(curve, mean)
            else:  # read off the curve at the real mean plus the paired difference, so the two agree
                diffs = list(paired_differences(runs, num, arm).values())
                d_mean, d_sd = mean_sd(diffs) if diffs else (math.nan, math.nan)
                paired = f"{100 * d_mean:+.1f}" + (f" ± {100 * d_sd:.1f}" if len(diffs) > 1 else "")
                worth = worth_in_real_scenes(curve, curve[num] + d_mean) if diffs and num in curve else "-"
            lines.append(f"| {num} | {arm} | {images} | {steps} | {len(values)} | {mean:.3f}{spread} | {paired} | "
                         f"{worth} | {minutes:.1f} |")
    return "\n".join(lines) + "\n"


def runs_table(runs: list[dict], arms: Sequence[str]) -> str:
    order = {arm: i for i, arm in enumerate([REAL, *arms])}
    lines = ["| real scenes | arm | seed | test mIoU | val mIoU (real split) | steps | minutes |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["num"], order.get(r["arm"], len(order)), r["seed"])):
        lines.append(f"| {r['num']} | {r['arm']} | {r['seed']} | {r['test_miou']:.3f} | {r.get('val_miou', math.nan):.3f} "
                     f"| {r.get('steps', '-')} | {r.get('seconds', 0) / 60:.1f} |")
    return "\n".join(lines) + "\n"


PALETTE = [(196, 78, 82), (85, 168, 104), (129, 114, 178), (204, 185, 116), (100, 181, 205), (140, 86, 75),
           (218, 139, 195), (140, 140, 140), (23, 190, 207), (188, 189, 34), (31, 119, 180), (255, 127, 14)]


def plot_curve(runs: list[dict], arms: Sequence[str], path: Path) -> None:
    """The real-only learning curve (seeds as dots, the mean as a line, N on a log axis) with every
    augmented arm drawn at its size, so a reader sees how many real scenes it is worth (PNG, PIL)."""
    from PIL import Image, ImageDraw, ImageFont

    curve = learning_curve(runs)
    drawn = [a for a in arms if any(r["arm"] == a for r in runs)]
    values = [r["test_miou"] for r in runs]
    if not curve or not values:
        raise ValueError("no real-only runs to draw")
    low, high = min(values) - 0.02, max(values) + 0.02
    left, top, width, height, legend = 80, 40, 620, 360, 330
    image = Image.new("RGB", (left + width + 40 + legend, top + height + 70), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=14)
    sizes = sorted(curve)
    lo_n, hi_n = math.log(sizes[0]) - 0.2, math.log(sizes[-1]) + 0.2

    def xy(num: float, miou: float) -> tuple[float, float]:
        x = left + (math.log(num) - lo_n) / (hi_n - lo_n) * width
        return x, top + (high - miou) / (high - low) * height

    draw.rectangle([left, top, left + width, top + height], outline="black")
    draw.text((left, 10), "test mIoU on held-out real scenes against real training scenes (log axis)", fill="black",
              font=font)
    for i in range(6):
        v = low + i * (high - low) / 5
        y = xy(sizes[0], v)[1]
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((left - 8, y), f"{v:.2f}", fill="black", font=font, anchor="rm")
    for num in sizes:
        x = xy(num, low)[0]
        draw.line([(x, top + height), (x, top + height + 4)], fill="black")
        draw.text((x, top + height + 8), str(num), fill="black", font=font, anchor="ma")
    draw.line([xy(n, curve[n]) for n in sizes], fill=(40, 40, 40), width=2)
    for r in runs:
        if r["arm"] == REAL:
            x, y = xy(r["num"], r["test_miou"])
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(90, 90, 90))
    for k, arm in enumerate(drawn):
        colour = PALETTE[k % len(PALETTE)]
        for num in sorted({r["num"] for r in runs if r["arm"] == arm}):
            mean = statistics.mean(scores(runs, num, arm).values())
            x, y = xy(num, mean)
            x += (k - len(drawn) / 2) * 4  # side by side at one size
            draw.rectangle([x - 4, y - 4, x + 4, y + 4], fill=colour)
        ly = top + 10 + 20 * k
        draw.rectangle([left + width + 30, ly, left + width + 40, ly + 10], fill=colour)
        draw.text((left + width + 48, ly - 2), arm, fill="black", font=font)
    draw.line([(left + width + 30, top + 10 + 20 * len(drawn) + 5), (left + width + 40, top + 15 + 20 * len(drawn))],
              fill=(40, 40, 40), width=2)
    draw.text((left + width + 48, top + 8 + 20 * len(drawn)), "real only (dots: seeds)", fill="black", font=font)
    image.save(path)
