"""Every number of an evaluation, from one pass over an image set.

Per batch of masks: the segmenter's prediction on each sample (consistency with its own
mask, and with the next mask as the other-mask baseline) and on the real photo (the
ceiling); segmenter features of both (the weight-free Fréchet distance); diversity over the
pairs of each mask's samples (1 - MS-SSIM always, LPIPS when its weights are there); and the
Inception statistics of FID / KID when theirs are. A metric whose network is missing is
skipped with one line in `notes`; the others still run.

The segmenter also reads a blurred copy of each real photo (the blur control). The consistency
ratio counts only when the instrument can tell detail: a ceiling of at least `min_ceiling` and
the blur control at most `max_blur_ratio` of it; otherwise the verdict says why, and every
report leads with it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sdm.data.rows import read_rgb_file
from sdm.metrics.distances import InceptionDistances, frechet_distance, gaussian_of
from sdm.metrics.diversity import lpips_distance, mean_pairwise, ssim_distance
from sdm.metrics.image_sets import ImageSet, MaskEntry
from sdm.segmenter.controls import BLUR_FACTOR, blur_control
from sdm.segmenter.scores import ConfusionMatrix, confusion_matrix, segmentation_scores

MIN_CEILING = 0.8  # a segmenter below this on real photos is too weak to judge consistency by
MAX_BLUR_RATIO = 0.8  # ... and one that rates blurred photos above this share of real cannot see detail


@dataclass(frozen=True)
class Calibration:
    """How a consistency figure is judged: the blur control's factor and the two bounds."""

    blur_factor: int = BLUR_FACTOR
    min_ceiling: float = MIN_CEILING
    max_blur_ratio: float = MAX_BLUR_RATIO


@dataclass
class Networks:
    """The metric networks an evaluation can use; None means the metric is skipped."""

    segmenter: nn.Module | None = None
    segmenter_info: dict[str, Any] = field(default_factory=dict)
    inception: int | nn.Module | None = None  # 2048 (the standard pool features) or an injected module
    lpips: nn.Module | None = None
    notes: list[str] = field(default_factory=list)  # why a metric is skipped


def to_tensor(arrays: Sequence[np.ndarray]) -> Tensor:
    """H x W x 3 uint8 arrays -> N x 3 x H x W float in [-1, 1]."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def batches_of_masks(entries: Sequence[MaskEntry], images_per_batch: int) -> Iterator[list[int]]:
    """Indices of whole masks, about `images_per_batch` images at a time (at least one mask)."""
    batch: list[int] = []
    count = 0
    for index, entry in enumerate(entries):
        if batch and count + len(entry.samples) > images_per_batch:
            yield batch
            batch, count = [], 0
        batch.append(index)
        count += len(entry.samples)
    if batch:
        yield batch


class Accumulators:
    """What one pass collects: confusion matrices, features, per-mask scores, diversities."""

    def __init__(self, num_classes: int, ignore: int | None = 0) -> None:
        self.num_classes, self.ignore = num_classes, ignore
        self.own, self.other, self.real, self.blur = (ConfusionMatrix(num_classes, ignore) for _ in range(4))
        self.fake_features: list[Tensor] = []
        self.real_features: list[Tensor] = []
        self.per_mask: list[dict[str, Any]] = []
        self.ssim: list[float] = []
        self.lpips: list[float] = []
        self.resized: Counter[str] = Counter()  # "generated 64x48" -> images read at another size


def read_at_mask_size(path: Path, size: tuple[int, int], acc: Accumulators, kind: str) -> np.ndarray:
    """An image at the masks' size; one of another size is resized (Lanczos) and counted, so the
    report says so instead of scoring it silently."""
    image = read_rgb_file(path)
    if image.shape[:2] == tuple(size):
        return image
    acc.resized[f"{kind} {image.shape[0]}x{image.shape[1]}"] += 1
    return read_rgb_file(path, size)


def segment(network: nn.Module, images: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """(predicted ids, pooled features) of a batch of images in [-1, 1]."""
    images = images.to(device)
    return network(images).argmax(1).cpu(), network.features(images).float().cpu()


def score_batch(image_set: ImageSet, indices: list[int], nets: Networks, acc: Accumulators,
                inception: InceptionDistances | None, device: torch.device, blur_factor: int = BLUR_FACTOR) -> None:
    entries = image_set.entries
    size = image_set.size
    for i in indices:
        entry = entries[i]
        samples = to_tensor([read_at_mask_size(p, size, acc, "generated") for p in entry.samples])
        label = torch.from_numpy(entry.label).long()
        row: dict[str, Any] = {"mask": entry.name, "images": len(entry.samples)}
        real = to_tensor([read_at_mask_size(entry.real, size, acc, "real")]) if entry.real is not None else None
        if nets.segmenter is not None:
            pred, features = segment(nets.segmenter, samples, device)
            targets = label.expand_as(pred)
            acc.own.update(pred, targets)
            other = torch.from_numpy(entries[(i + 1) % len(entries)].label).long().expand_as(pred)
            if len(entries) > 1:
                acc.other.update(pred, other)
            acc.fake_features.append(features)
            mask_scores = segmentation_scores(confusion_matrix(pred, targets, acc.num_classes, acc.ignore), acc.ignore)
            row["miou"] = mask_scores["miou"]
            if real is not None:
                real_pred, real_features = segment(nets.segmenter, real, device)
                acc.real.update(real_pred, label[None])
                acc.real_features.append(real_features)
                blur_pred, _ = segment(nets.segmenter, blur_control(real, blur_factor), device)
                acc.blur.update(blur_pred, label[None])
                row["real_miou"] = segmentation_scores(
                    confusion_matrix(real_pred, label[None], acc.num_classes, acc.ignore), acc.ignore)["miou"]
        if len(samples) > 1:
            row["diversity_ms_ssim"] = mean_pairwise([samples], ssim_distance)
            acc.ssim.append(row["diversity_ms_ssim"])
            if nets.lpips is not None:
                row["diversity_lpips"] = mean_pairwise([samples.to(device)], lpips_distance(nets.lpips))
                acc.lpips.append(row["diversity_lpips"])
        if inception is not None:
            inception.update(samples, real=False)
            if real is not None:
                inception.update(real, real=True)
        acc.per_mask.append(row)


def score_set(image_set: ImageSet, nets: Networks, *, num_classes: int | None = None, images_per_batch: int = 32,
              device: str | torch.device = "cpu", kid_subset_size: int = 1000, progress: bool = True,
              calibration: Calibration | None = None) -> dict[str, Any]:
    """Every metric the networks allow, over one image set (see module doc). Classes and the id not
    scored come from the set's table; `num_classes` widens the matrices (a segmenter of more classes)."""
    device = torch.device(device)
    notes = list(nets.notes)
    for network in (nets.segmenter, nets.lpips):
        if network is not None:
            network.to(device).eval()
    calibration = calibration or Calibration()
    acc = Accumulators(num_classes or image_set.table.num_classes, image_set.table.ignore)
    n_real = sum(e.real is not None for e in image_set.entries)
    inception = None
    if nets.inception is not None and n_real >= 2:
        inception = InceptionDistances(nets.inception, n_real, image_set.num_images, kid_subset_size)
    elif nets.inception is not None:
        notes.append("FID/KID skipped: the set has fewer than 2 real images (pass real=<folder of photos>)")
    bar = tqdm(total=len(image_set.entries), desc="evaluate", unit="mask", disable=not progress)
    with torch.no_grad():
        for indices in batches_of_masks(image_set.entries, images_per_batch):
            score_batch(image_set, indices, nets, acc, inception, device, calibration.blur_factor)
            bar.update(len(indices))
    bar.close()
    notes += [f"{count} {found.split()[0]} image(s) were {found.split()[1]}, not the masks' {image_set.size[0]}x"
              f"{image_set.size[1]}: resized (Lanczos) before scoring" for found, count in sorted(acc.resized.items())]
    return summarise(image_set, nets, acc, inception, notes, calibration)


def consistency(image_set: ImageSet, nets: Networks, acc: Accumulators, notes: list[str], blur_factor: int = BLUR_FACTOR
                ) -> tuple[dict[str, float], dict[str, dict[str, float | None]], dict[str, str]]:
    """mIoU against the own masks, the other-mask baseline, the real ceiling and their ratio."""
    own = acc.own.scores()
    metrics = {"miou": own["miou"], "pixel_accuracy": own["pixel_accuracy"]}
    per_class = {"generated": {str(c): v for c, v in own["per_class_iou"].items()},
                 "mask_pixels": {str(c): n for c, n in own["per_class_pixels"].items()}}
    sources: dict[str, str] = {}
    if len(image_set.entries) > 1:
        metrics["other_mask_miou"] = acc.other.scores()["miou"]
    stored = nets.segmenter_info.get("calibration") or {}  # the segmenter's own, from its training
    if acc.real_features:
        real = acc.real.scores()
        metrics.update(real_miou=real["miou"], real_pixel_accuracy=real["pixel_accuracy"],
                       blur_control_miou=acc.blur.scores()["miou"])
        per_class["real"] = {str(c): v for c, v in real["per_class_iou"].items()}
        sources["real_miou"] = "the segmenter on the real photos of these masks"
        sources["blur_control_miou"] = "the same photos blurred (down and up), the same segmenter"
    else:
        if nets.segmenter_info.get("real_val_miou") is not None:
            metrics["real_miou"] = float(nets.segmenter_info["real_val_miou"])
            sources["real_miou"] = "the segmenter's own held-out split (this set has no real photos)"
        if stored.get("blur_miou") is not None and stored.get("blur_factor", blur_factor) == blur_factor:
            metrics["blur_control_miou"] = float(stored["blur_miou"])
            sources["blur_control_miou"] = "the segmenter's own held-out split, blurred (this set has no real photos)"
        elif stored.get("blur_miou") is not None:
            notes.append(f"the segmenter's stored calibration blurred by {stored['blur_factor']}x, not by "
                         f"evaluation.calibration.blur_factor={blur_factor}: no blur control for this set")
        elif nets.segmenter is not None:
            notes.append("this set has no real photos and the segmenter's segmenter.json holds no calibration "
                         "(it predates it): retrain it with segmenter.retrain=true, or pass real=<photos>")
    if "real_miou" in metrics:
        ceiling = metrics["real_miou"]
        metrics["consistency_ratio"] = own["miou"] / ceiling if ceiling > 0 else float("nan")
        if "blur_control_miou" in metrics:
            from_store = not acc.real_features and stored.get("blur_ratio") is not None
            metrics["blur_control_ratio"] = (float(stored["blur_ratio"]) if from_store  # both halves from one pass
                                             else metrics["blur_control_miou"] / ceiling if ceiling > 0 else float("nan"))
    if sum(len(f) for f in acc.real_features) >= 2:
        real_gaussian = gaussian_of(torch.cat(acc.real_features))
        metrics["segmenter_frechet_distance"] = frechet_distance(*real_gaussian,
                                                                 *gaussian_of(torch.cat(acc.fake_features)))
    else:
        notes.append("segmenter Fréchet distance skipped: the set has fewer than 2 real photos")
    return metrics, per_class, sources


def instrument_verdict(metrics: dict[str, float], calibration: Calibration) -> dict[str, Any]:
    """Can this segmenter judge the generated images? Reliable only with a high ceiling and a
    blur control clearly below it; the reasons name the bound each figure missed."""
    ceiling, blur = metrics.get("real_miou"), metrics.get("blur_control_ratio")
    reasons = []
    if ceiling is None:
        reasons.append("no ceiling: neither real photos nor the segmenter's held-out score")
    elif not math.isfinite(ceiling) or ceiling < calibration.min_ceiling:
        reasons.append(f"its ceiling (mIoU {ceiling:.2f} on real photos) is below {calibration.min_ceiling:.2f}")
    if "blur_control_miou" not in metrics:
        reasons.append("no blur control: neither real photos nor a stored calibration")
    elif blur is None or not math.isfinite(blur):
        reasons.append("no blur control ratio: the ceiling is zero")
    elif blur > calibration.max_blur_ratio:
        reasons.append(f"it rates blurred photos at {blur:.0%} of real (the bound is {calibration.max_blur_ratio:.0%})")
    verdict = {"reliable": not reasons, "reasons": reasons, "min_ceiling": calibration.min_ceiling,
               "max_blur_ratio": calibration.max_blur_ratio, "blur_factor": calibration.blur_factor}
    verdict["summary"] = (f"the instrument can judge detail (ceiling {ceiling:.2f}, blurred photos at {blur:.0%} of "
                          "it): consistency ratio reliable" if not reasons else
                          "UNRELIABLE consistency ratio: the instrument cannot judge detail (" + "; ".join(reasons)
                          + "); train a stronger segmenter (python -m sdm.cli.segmenter)")
    return verdict


def summarise(image_set: ImageSet, nets: Networks, acc: Accumulators, inception: InceptionDistances | None,
              notes: list[str], calibration: Calibration | None = None) -> dict[str, Any]:
    calibration = calibration or Calibration()
    metrics: dict[str, float] = {}
    per_class: dict[str, dict[str, float | None]] = {}
    sources: dict[str, str] = {}
    if inception is not None:
        metrics.update(inception.compute())
    if acc.lpips:
        metrics["lpips_diversity"] = float(np.mean(acc.lpips))
    if acc.ssim:
        metrics["ms_ssim_diversity"] = float(np.mean(acc.ssim))
    else:
        notes.append("diversity skipped: every mask has a single image (sample.py num_per_mask >= 2)")
    if nets.segmenter is not None:
        found, per_class, sources = consistency(image_set, nets, acc, notes, calibration.blur_factor)
        metrics.update(found)
    else:
        notes.append("semantic consistency skipped: no segmenter (train one with `python -m sdm.cli.segmenter "
                     "data=...`, then pass evaluation.segmenter=<its folder>)")
    instrument = instrument_verdict(metrics, calibration) if nets.segmenter is not None else None
    return {
        "metrics": metrics,
        "instrument": instrument,
        "per_class_iou": per_class,
        "per_mask": acc.per_mask,
        "notes": notes,
        "sources": sources,
        "counts": {"masks": len(image_set.entries), "images": image_set.num_images,
                   "real": sum(e.real is not None for e in image_set.entries)},
    }
