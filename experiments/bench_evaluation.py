"""Evaluation speed: seconds per 100 generated images at 64x64 and 256x256 on this machine.

    python experiments/bench_evaluation.py [--sizes 64 256] [--masks 20] [--per-mask 5]

Builds a sample folder of scenes (5 noisy copies per mask), then times the whole
`evaluate_set` (file reading, the small segmenter, 1 - MS-SSIM, features, report, pictures)
and, separately, what the weighted metrics add per 100 images: the Inception-v3 forward at
299x299 (torchvision's architecture with random weights, the cost of FID/KID's feature
pass) and AlexNet-LPIPS over all pairs (random backbone). Writes results_evaluation.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from _common import machine, markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.evaluation import write_sample_folder  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from sdm.data.scenes import generate_scene  # noqa: E402
from sdm.metrics.evaluation import evaluate_set  # noqa: E402
from sdm.metrics.image_sets import from_sample_folder  # noqa: E402
from sdm.metrics.scoring import Networks  # noqa: E402
from sdm.segmenter.networks import SmallSegmenter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def scene_folder(root: Path, size: int, masks: int, per_mask: int) -> Path:
    rng = np.random.default_rng(0)
    scenes = [generate_scene(90_000 + i, size, size) for i in range(masks)]
    samples = [[np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8) for _ in range(per_mask)]
               for image, _ in scenes]
    return write_sample_folder(root, [label for _, label in scenes], samples, [image for image, _ in scenes])


def per_100(seconds: float, images: int) -> float:
    return round(100 * seconds / images, 2)


def inception_cost(images: int) -> float:
    from torchvision.models import inception_v3

    network = inception_v3(weights=None, aux_logits=True, init_weights=False).eval()
    batch = torch.rand(min(images, 32), 3, 299, 299)
    with torch.no_grad():
        network(batch[:2])
        started = time.perf_counter()
        network(batch)
    return (time.perf_counter() - started) / len(batch) * images


def lpips_cost(size: int, per_mask: int, masks: int) -> float:
    import lpips

    network = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    pairs = len(list(combinations(range(per_mask), 2)))
    a, b = torch.rand(pairs, 3, size, size) * 2 - 1, torch.rand(pairs, 3, size, size) * 2 - 1
    with torch.no_grad():
        network(a[:1], b[:1])
        started = time.perf_counter()
        network(a, b)
    return (time.perf_counter() - started) * masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--masks", type=int, default=20)
    parser.add_argument("--per-mask", type=int, default=5)
    args = parser.parse_args()
    ecfg = OmegaConf.load(REPO / "conf" / "evaluation" / "default.yaml")
    ecfg.progress, ecfg.tensorboard, ecfg.device = False, False, "cpu"
    rows = []
    for size in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="sdm-bench-eval-"))
        folder = scene_folder(work / "s", size, args.masks, args.per_mask)
        images = args.masks * args.per_mask
        nets = Networks(segmenter=SmallSegmenter(35, 16), segmenter_info={"real_val_miou": 0.5})
        started = time.perf_counter()
        evaluate_set(from_sample_folder(folder), folder, ecfg, nets=nets)
        seconds = time.perf_counter() - started
        rows.append({"size": f"{size}x{size}", "images": images,
                     "weight-free evaluation, s / 100 images": per_100(seconds, images),
                     "+ Inception features, s / 100": per_100(inception_cost(images + args.masks), images),
                     "+ LPIPS pairs, s / 100": per_100(lpips_cost(size, args.per_mask, args.masks), images)})
        shutil.rmtree(work)
        print(rows[-1], flush=True)
    table = markdown_table(rows)
    print(table)
    Path(__file__).with_name("results_evaluation.md").write_text(
        f"# Evaluation speed\n\n`python experiments/bench_evaluation.py` on {machine()}.\n\n"
        f"{args.masks} masks x {args.per_mask} samples per size, plus the real photo of each mask. The "
        "weight-free evaluation is the whole `evaluate_set` with the small segmenter (consistency, "
        "the segmenter-feature distance, 1 - MS-SSIM diversity, report and pictures); the Inception "
        "and LPIPS columns are what FID/KID and LPIPS diversity add when their weights are present.\n\n"
        f"{table}\n")


if __name__ == "__main__":
    main()
