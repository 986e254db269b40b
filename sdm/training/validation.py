"""What the validation step measures on its sample grid: does each sample follow its mask?

With a segmenter cached for the run's data and size (`python -m sdm.cli.segmenter`),
its mIoU against the sample's own mask and against another mask of the grid. Without
one, on the embedded scenes only, the nearest-colour agreement, under a name that says so.
training.py attaches the scorer to the module, which never imports a metric network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sdm.core.errors import ConfigError
from sdm.metrics.evaluation import cached_segmenter_folder
from sdm.metrics.scene_agreement import agreement_own_and_other
from sdm.segmenter.cache import INFO_FILE, load_segmenter
from sdm.segmenter.scores import confusion_matrix, segmentation_scores

Scorer = Callable[[Tensor, Tensor, int], dict[str, float]]  # (samples, labels, per_mask) -> metrics


def other_labels(labels: Tensor, per_mask: int) -> Tensor:
    """For each sample (grouped by mask), the label of the next mask: never its own."""
    return labels.roll(-1, dims=0).repeat_interleave(per_mask, dim=0)


class SegmenterScorer:
    """mIoU of a segmenter's reading of the samples against their own masks and other masks."""

    def __init__(self, segmenter: torch.nn.Module, num_classes: int, folder: str) -> None:
        self.segmenter, self.num_classes, self.folder = segmenter.eval(), num_classes, folder

    @torch.no_grad()
    def __call__(self, samples: Tensor, labels: Tensor, per_mask: int) -> dict[str, float]:
        network = self.segmenter.to(samples.device)
        pred = network(samples.float()).argmax(1).cpu()
        own = labels.cpu().long().repeat_interleave(per_mask, dim=0)
        scores = {"val/segmenter_miou": segmentation_scores(confusion_matrix(pred, own, self.num_classes))["miou"]}
        if len(labels) > 1:
            other = other_labels(labels.cpu().long(), per_mask)
            scores["val/segmenter_miou_other_masks"] = segmentation_scores(
                confusion_matrix(pred, other, self.num_classes))["miou"]
        return scores


def colour_scorer(samples: Tensor, labels: Tensor, per_mask: int) -> dict[str, float]:
    if len(labels) < 2:
        return {}
    own, other = agreement_own_and_other(samples, labels, per_mask)
    return {"val/scene_colour_agreement": own, "val/scene_colour_agreement_other_masks": other}


def find_scorer(cfg: dict[str, Any]) -> Scorer | None:
    """The scorer of a run's validation grid, per `validation.segmenter` (auto | none | a folder)."""
    spec = str(cfg["validation"].get("segmenter", "auto"))
    fallback = colour_scorer if cfg["data"]["name"] == "scenes" else None
    if spec == "none" or (spec == "auto" and cfg["data"].get("streaming")):  # a stream has no cache key
        return fallback
    folder = cached_segmenter_folder(cfg["data"]) if spec == "auto" else Path(spec).expanduser()
    if not (folder / INFO_FILE).is_file():
        if spec != "auto":
            raise ConfigError(f"validation.segmenter={spec}: no trained segmenter there ({INFO_FILE} missing)")
        return fallback
    network, _ = load_segmenter(folder)
    print(f"validation scores its sample grid with the segmenter {folder}")
    return SegmenterScorer(network, int(cfg["data"]["num_classes"]), str(folder))


class LazyScorer:
    """Finds its scorer at the first validation (on rank 0, once the data is prepared)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg, self.scorer, self.found = cfg, None, False

    def __call__(self, samples: Tensor, labels: Tensor, per_mask: int) -> dict[str, float]:
        if not self.found:
            self.scorer, self.found = find_scorer(self.cfg), True
        return self.scorer(samples, labels, per_mask) if self.scorer is not None else {}


def validation_scorer(cfg: dict[str, Any]) -> Scorer:
    """What training.py attaches to the module (`module.sample_scorer`); a folder given by
    name is checked now, not at the first validation."""

    spec = str(cfg["validation"].get("segmenter", "auto"))
    if spec not in ("auto", "none") and not (Path(spec).expanduser() / INFO_FILE).is_file():
        raise ConfigError(f"validation.segmenter={spec}: no trained segmenter there ({INFO_FILE} missing); "
                          "use auto, none, or a folder made by python -m sdm.cli.segmenter")
    return LazyScorer(cfg)
