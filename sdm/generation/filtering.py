"""Noisy-pixel filtering of synthetic labels, after FreeMask (Yang et al., NeurIPS 2023).

A generated image follows its mask only in part: a region drawn as another class teaches a
segmenter the wrong thing. A segmenter trained on the real rows scores every synthetic pixel
(cross-entropy against the mask); a pixel whose loss exceeds `tolerance` times the mean loss of
its class over the real training pixels becomes unlabeled: the class table's ignore id (sidewalk's
0), which every trainer here and the Hub schema's users ignore. The filtered labels are written into the export, so any
downstream trainer benefits unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from sdm.core.configs import CONFIG_DIR
from sdm.core.errors import ConfigError
from sdm.data.classes import class_table
from sdm.data.prepare import PreparedData, decode_row, prepare_data, split_indices
from sdm.segmenter.cache import cache_folder, default_segmenter_settings, load_segmenter

UNLABELED = 0  # sidewalk's; other tables name theirs (data.classes.ignore)
DEFAULT_TOLERANCE = 1.25  # FreeMask's
BATCH = 32


@dataclass(frozen=True)
class PixelFilter:
    """What the export filters with: a segmenter folder (or `auto`: the cached default segmenter of
    the run's data, the evaluation's) and the tolerance over each class's mean real loss."""

    segmenter: str = "auto"
    tolerance: float = DEFAULT_TOLERANCE

    def __post_init__(self) -> None:
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, int | float) or not (
                math.isfinite(self.tolerance) and self.tolerance > 0):
            raise ConfigError(f"filter tolerance={self.tolerance!r} is invalid: expected a number > 0 (a pixel is "
                              f"unlabeled when its loss exceeds tolerance x its class's mean real loss; "
                              f"FreeMask uses {DEFAULT_TOLERANCE})")


def to_input(images: np.ndarray) -> Tensor:
    """N x H x W x 3 uint8 -> N x 3 x H x W in [-1, 1], as the segmenters read images."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def pixel_losses(network: nn.Module, images: np.ndarray, labels: np.ndarray, unlabeled: int = UNLABELED) -> Tensor:
    """Cross-entropy of each pixel against its label (N x H x W); 0 where the label is unlabeled."""
    logits = network(to_input(images)).float()
    target = torch.from_numpy(np.ascontiguousarray(labels)).long()
    return F.cross_entropy(logits, target, ignore_index=unlabeled, reduction="none")


def batches(pairs: Iterable[tuple[np.ndarray, np.ndarray]], size: int = BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    chunk: list[tuple[np.ndarray, np.ndarray]] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == size:
            yield np.stack([c[0] for c in chunk]), np.stack([c[1] for c in chunk])
            chunk = []
    if chunk:
        yield np.stack([c[0] for c in chunk]), np.stack([c[1] for c in chunk])


def class_mean_losses(network: nn.Module, pairs: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int,
                      unlabeled: int = UNLABELED) -> Tensor:
    """Mean loss of each class over the real pixels labelled with it (NaN for a class never seen)."""
    total = torch.zeros(num_classes, dtype=torch.float64)
    count = torch.zeros(num_classes, dtype=torch.float64)
    for images, labels in batches(pairs):
        losses = pixel_losses(network, images, labels, unlabeled).double().flatten()
        ids = torch.from_numpy(labels).long().flatten()
        total.index_add_(0, ids, losses)
        count.index_add_(0, ids, torch.ones_like(losses))
    means = total / count
    means[unlabeled] = math.nan
    return means


def filter_labels(losses: Tensor, labels: np.ndarray, class_means: Tensor, tolerance: float,
                  unlabeled: int = UNLABELED) -> np.ndarray:
    """`labels` with every pixel whose loss exceeds tolerance x its class's mean set to unlabeled.
    A class the real rows never showed has no mean: its pixels are kept (nothing to judge them by)."""
    ids = torch.from_numpy(np.ascontiguousarray(labels)).long()
    threshold = tolerance * class_means[ids]
    noisy = (losses.double() > threshold) & ~torch.isnan(threshold)
    filtered = labels.copy()
    filtered[noisy.numpy()] = unlabeled
    return filtered


def real_training_pairs(prepared: PreparedData, train_data: dict[str, Any]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The run's real training rows (its own split: the rows its generator and segmenter saw)."""
    train_idx, _ = split_indices(len(prepared), float(train_data.get("val_fraction", 0.05)),
                                 int(train_data.get("split_seed", 0)))
    rows = prepared.open()
    for index in train_idx:
        yield decode_row(rows[int(index)], prepared.size)


@dataclass
class LabelFilter:
    """A PixelFilter made ready for one generation: its segmenter and the class means."""

    network: nn.Module
    class_means: Tensor
    tolerance: float
    folder: Path
    unlabeled: int = UNLABELED  # the class table's ignore id: what a noisy pixel becomes

    def __call__(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        losses = pixel_losses(self.network, images, labels, self.unlabeled)
        return filter_labels(losses, labels, self.class_means, self.tolerance, self.unlabeled)


def segmenter_for(spec: str, prepared: PreparedData) -> Path:
    if spec != "auto":
        return Path(spec).expanduser()
    folder = cache_folder(prepared.root.name, default_segmenter_settings())
    if not folder.is_dir():
        raise ConfigError(f"filter segmenter=auto: no segmenter of this run's data is cached at {folder}; train it "
                          f"with `sdm-segmenter` and the run's data settings (or `sdm-evaluate`, which does), or pass "
                          "a segmenter folder")
    return folder


def prepare_filter(pixel_filter: PixelFilter, train_data: dict[str, Any], size: tuple[int, int]) -> LabelFilter:
    """Load the filter's segmenter, check that it learnt the run's own real rows at the samples' size,
    and measure its mean loss per class on them: all before the first row is exported."""
    table = class_table(train_data)
    if table.ignore is None:
        raise ConfigError(f"filtering marks noisy pixels with the class table's ignore id, and the '{table.name}' "
                          f"table has none (data.classes.ignore=null): give the run's data an ignore id")
    prepared = prepare_data(OmegaConf.create(train_data), show_progress=False)
    folder = segmenter_for(pixel_filter.segmenter, prepared)
    network, info = load_segmenter(folder)
    trained_on, trained_size = info.get("data_key"), tuple(info.get("size", ()))
    if trained_on != prepared.root.name or trained_size != tuple(size):
        raise ConfigError(
            f"filter segmenter {folder} learnt {trained_on} at {'x'.join(map(str, trained_size))}, but these samples "
            f"come from a model of {prepared.root.name} at {size[0]}x{size[1]}: its losses would not say which "
            f"pixels are wrong; train one on the run's data ({CONFIG_DIR / 'segmenter.yaml'}) and pass its folder")
    if int(info["num_classes"]) != int(train_data["num_classes"]):
        raise ConfigError(f"filter segmenter {folder} knows {info['num_classes']} classes, the run "
                          f"{train_data['num_classes']}")
    means = class_mean_losses(network, real_training_pairs(prepared, train_data), int(train_data["num_classes"]),
                              table.ignore)
    return LabelFilter(network, means, float(pixel_filter.tolerance), folder, table.ignore)
